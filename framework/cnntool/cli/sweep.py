"""`cnntool sweep`: a hyperparameter search on Ray Tune, ending in a leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from cnntool.cli.output import note, print_json
from cnntool.errors import CnntoolError

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def sweep(
    spec: Annotated[
        Path | None,
        typer.Argument(help="Network spec (JSON file); omit it with --resume.", show_default=False),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset, as for `cnntool train --data`.", show_default=False)
    ] = None,
    space: Annotated[
        Path | None,
        typer.Option(
            help='Search space (JSON): options and spec paths to distributions, e.g. {"lr": {"loguniform": '
            '[0.001, 0.1]}, "layers.0.filters": {"choice": [8, 16]}}.',
            show_default=False,
        ),
    ] = None,
    trials: Annotated[int, typer.Option(min=1, max=10_000, help="Trials to run.")] = 8,
    out_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for trials/, best.cnnb and the sweep's state.", show_default=False),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, max=100_000, help="Epochs per trial (at most).")] = 5,
    metric: Annotated[
        str, typer.Option(help="val_accuracy, val_loss, accuracy or loss: what ranks the trials.")
    ] = "val_accuracy",
    scheduler: Annotated[
        str, typer.Option(help="fifo (every trial runs all epochs) or asha (poor trials stop early).")
    ] = "fifo",
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="Trials at once [the cluster's CPUs, one thread each].")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of every trial's training and of the search.")] = 0,
    resume: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Continue the interrupted sweep in DIR.", show_default=False),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="A running Ray cluster [RAY_ADDRESS, else a local cluster].", show_default=False),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="End with one JSON document on stdout (trials, best).")
    ] = False,
) -> None:
    """Train a spec many times with values drawn from a search space, on Ray Tune.

    Each trial leaves its bundle in DIR/trials/ (its config and seed in meta.sweep); the best
    is copied to DIR/best.cnnb. A failed trial is listed with its error and the sweep goes on.
    """
    from cnntool.inference.run import import_ray
    from cnntool.training import sweep as sweeps

    import_ray()
    if resume is not None:
        given = [name for name, value in (("SPEC", spec), ("--data", data), ("--space", space),
                                          ("--out-dir", out_dir)) if value is not None]  # fmt: skip
        if given:
            usage(f"--resume {resume} takes the sweep's settings from {resume}; leave out {', '.join(given)}")
        settings = sweeps.load_settings(resume)
        directory = resume
    else:
        missing = [name for name, value in (("SPEC", spec), ("--data", data), ("--space", space),
                                            ("--out-dir", out_dir)) if value is None]  # fmt: skip
        if missing:
            usage(
                f"missing {', '.join(missing)}: "
                "cnntool sweep SPEC --data DATA --space SPACE.json --out-dir DIR"
            )
        # usage() exits: none of them is missing here.
        assert spec is not None and data is not None and space is not None and out_dir is not None
        settings = sweeps.prepare(
            spec, data, space, out_dir, trials=trials, epochs=epochs, metric=metric, scheduler=scheduler,
            max_concurrent=max_concurrent, seed=seed,
        )  # fmt: skip
        directory = out_dir
    board = sweeps.run_sweep(
        directory, settings, address=ray_address, resume=resume is not None, on_event=note
    )
    if json_output:
        print_json(board)
    else:
        print_table(board)
    if board["interrupted"]:
        note(f"interrupted: continue the sweep with cnntool sweep --resume {directory}")
        raise typer.Exit(130)
    if board["best"] is None:
        raise CnntoolError(f"every trial failed; their errors are in {directory / 'trials'}")


def usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def print_table(board: dict[str, Any]) -> None:
    metric = board["metric"]
    keys = sorted({key for trial in board["trials"] for key in trial["config"]})
    header = ["rank", "trial", "status", "epochs", metric, *keys]
    lines = [header]
    for rank, trial in enumerate(board["trials"], 1):
        value = trial[metric]
        lines.append(
            [
                str(rank),
                trial["id"],
                trial["status"],
                str(trial["epochs"] or "-"),
                f"{value:.4f}" if isinstance(value, float) else "-",
                *(shown(trial["config"].get(key)) for key in keys),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for trial in board["trials"]:
        if trial["error"]:
            typer.echo(f"trial {trial['id']} failed: {trial['error']}")
    if board["best"] is not None:
        best = board["best"]
        typer.echo(
            f"best: trial {best['id']} ({metric} {best[metric]:.4f}), copied to {board['best_bundle']}"
        )
    typer.echo(f"{len(board['trials'])} trials in {board['seconds']:.1f}s")


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
