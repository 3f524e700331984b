"""`cnntool infer`: run a bundle on images, folders of images or arrays; print the results or
write them to a file, here or on Ray."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnntool.cli.output import TerminalBar, note, print_json, stderr_is_terminal
from cnntool.errors import CnntoolError

if TYPE_CHECKING:
    from rich.progress import TaskID

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def infer(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle (.cnnb).", show_default=False)],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Images (PNG, JPEG, ...), folders (searched recursively for images), .npy/.npz arrays "
            "or IDX files.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write one row per example to FILE (.jsonl, .csv or .parquet) instead of printing.",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1 << 16, help="Examples per call of the network.")
    ] = 256,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first input that cannot be read.")
    ] = False,
    use_ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray Data (a local cluster, or --ray-address).")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="With --ray: actors, each loading the bundle once [the cluster's CPUs]."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --ray: the address of a running cluster [RAY_ADDRESS, else a local cluster].",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per input.")
    ] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for numba and BLAS.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per input.")
    ] = False,
) -> None:
    """Predict the classes of every input; print the most likely ones, or write every row to a file.

    An input that cannot be read is reported on its own line (an error row with --out) and the
    others are still predicted; the exit code is then 1. Each row holds the input (and its index
    within an array), the top class's index, label and probability, and every probability.
    """
    from cnntool.bundle import load_bundle
    from cnntool.inference import run as inference_run
    from cnntool.inference.predict import row_record
    from cnntool.system.threads import available_cpus, set_threads

    if (workers is not None or ray_address is not None) and not use_ray:
        typer.echo("error: --workers and --ray-address need --ray", err=True)
        raise typer.Exit(2)
    if use_ray:
        inference_run.import_ray()
        if workers is not None and not (ray_address or os.environ.get("RAY_ADDRESS")):
            inference_run.worker_threads(available_cpus(), workers)
    if out is not None:
        inference_run.output_format(out)
    loaded = load_bundle(bundle)
    net = loaded.network
    tasks = inference_run.make_tasks(inputs, net.input_shape, batch_size)
    clock = {"started": time.perf_counter()}

    def ready(message: str) -> None:
        note(message)
        clock["started"] = time.perf_counter()

    if use_ray:
        batches = inference_run.run_on_ray(
            bundle, tasks, workers=workers, address=ray_address, batch_size=batch_size, on_ready=ready
        )
    else:
        set_threads(threads)
        batches = inference_run.run_here(loaded, tasks)
    total = sum(inference_run.task_examples(task) for task in tasks)
    failures: list[str] = []
    if out is None:
        records = []
        for rows in checked(batches, strict, failures):
            records += [row_record(row, net.classes, min(top_k, len(net.classes))) for row in rows]
        if json_output:
            print_json(records)
        else:
            for record in records:
                if "error" not in record:
                    typer.echo(text_line(record))
    else:
        written = 0
        with inference_run.row_writer(out, net.classes) as write, RowProgress(total) as progress:
            for rows in checked(batches, strict, failures):
                write(rows)
                written += len(rows)
                progress.advance(len(rows))
        seconds = time.perf_counter() - clock["started"]
        summary = (
            f"wrote {written} rows to {out} in {seconds:.2f}s ({written / max(seconds, 1e-9):,.0f} rows/s)"
        )
        note(summary + (f", {len(failures)} of them errors" if failures else ""))
        if json_output:
            print_json({"out": str(out), "rows": written, "errors": len(failures), "seconds": seconds})
    if failures:
        raise typer.Exit(1)


def checked(batches: Any, strict: bool, failures: list[str]) -> Any:
    """The batches of rows, each error reported on its line as it comes (with --strict: the
    first one stops the run, and no file is written)."""
    for rows in batches:
        for row in rows:
            if row["error"] is not None:
                if strict:
                    raise CnntoolError(f"{row['error']} (--strict stops at the first input that fails)")
                typer.echo(f"error: {row['error']}", err=True)
                failures.append(row["error"])
        yield rows


def text_line(record: dict[str, Any]) -> str:
    name = record["input"] + (f"[{record['item']}]" if "item" in record else "")
    guesses = "  ".join(f"{t['label']} ({t['probability']:.3f})" for t in record["top"])
    return f"{name}: {guesses}"


class RowProgress(TerminalBar):
    """A progress bar over the examples on a terminal; nothing otherwise."""

    task: TaskID  # the bar's, when there is one

    def __init__(self, total: int) -> None:
        self.bar = None
        if stderr_is_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("infer"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("infer", total=total)

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)
