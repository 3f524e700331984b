"""`cnntool warmup`: compile a network's kernels now, into the on-disk cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import note, print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def warmup(
    file: Annotated[Path, typer.Argument(help="A spec (.json) or a bundle (.cnnb).", show_default=False)],
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size to prepare besides 1.")] = 32,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for numba and BLAS.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the timings as JSON.")] = False,
) -> None:
    """Compile everything a network needs (training, evaluation, inference) and cache it, so
    later runs start at full speed. Safe to run before starting several processes at once."""
    from cnntool.inference.warmup import load_network, warm_up
    from cnntool.system.threads import set_threads

    started = time.perf_counter()
    net = load_network(file)
    set_threads(threads)
    timings = warm_up(net, batch_size)
    total = time.perf_counter() - started
    execution = net.execution()
    if json_output:
        print_json(
            {"seconds": total, "steps": timings, "compiled": net.plan is not None, "execution": execution}
        )
    else:
        from cnntool.model.execution import execution_line

        mode = "compiled plan" if net.plan is not None else "layer by layer"
        note(f"warmed up {net.name!r} ({mode}) in {total:.1f} s")
        if net.plan is None:
            note(execution_line(execution))
