"""`cnntool train`: spec + data -> a trained bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import EpochProgress, note, print_json


def train(
    spec: Annotated[Path, typer.Argument(help="Network spec (JSON file).", show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Bundle file to write (.cnnb).", show_default=False)
    ],
    data: Annotated[
        str | None,
        typer.Option(help="Dataset: mnist-sample, a folder of IDX files, or an .npz file."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs to train [spec or 5].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Examples per step [spec or 32].")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate [spec, else 0.01 sgd / 0.001 adam].")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adam or adamw [spec or sgd].")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum [spec or 0.9].")] = None,
    nesterov: Annotated[
        bool | None, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum.")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option(help="L2 weight decay [spec or 0].")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for weights, shuffling and the split [spec or 0].")
    ] = None,
    val_split: Annotated[
        float | None, typer.Option(help="Fraction of training data held out for validation [spec or 0.1].")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads for numba and BLAS [CNNTOOL_THREADS or all CPUs].")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="End with one JSON document on stdout.")
    ] = False,
) -> None:
    """Train a network on a dataset and save it as one bundle file."""
    from cnntool.training_run import TrainingRun

    overrides = {
        "data": data,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "seed": seed,
        "val_split": val_split,
    }
    run = TrainingRun.prepare(spec, out, overrides, threads=threads)
    note(
        f"training {run.net.name!r} ({run.net.num_params} parameters) on {run.dataset.name}: "
        f"{len(run.x_train)} training, {len(run.x_val)} validation, {len(run.dataset.x_test)} test images; "
        f"{run.options.optimizer}, lr {run.lr}, batch {run.options.batch_size}, {run.threads} threads"
    )
    with EpochProgress(run.options.epochs) as progress:
        result = run.run(on_epoch=progress.on_epoch, on_batch=progress.on_batch)
    test = result["test"]
    if test is not None:
        note(f"test: loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f}")
    note(f"saved {result['bundle']}")
    if json_output:
        print_json(result)
