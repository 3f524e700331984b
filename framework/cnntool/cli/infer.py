"""`cnntool infer`: run a bundle on images or arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import print_json


def infer(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle (.cnnb).", show_default=False)],
    inputs: Annotated[list[Path], typer.Argument(help="PNG/JPEG images or .npy arrays.", show_default=False)],
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per input.")
    ] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for numba and BLAS.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per input.")
    ] = False,
) -> None:
    """Print the most likely classes, with probabilities, for each input."""
    from cnntool.bundle import load_bundle
    from cnntool.predict import predict_files
    from cnntool.threads import set_threads

    loaded = load_bundle(bundle)
    set_threads(threads)
    records = predict_files(loaded, inputs, top_k=min(top_k, len(loaded.network.classes)))
    if json_output:
        print_json(records)
        return
    for record in records:
        name = record["input"] + (f"[{record['item']}]" if "item" in record else "")
        guesses = "  ".join(f"{t['label']} ({t['probability']:.3f})" for t in record["top"])
        typer.echo(f"{name}: {guesses}")
