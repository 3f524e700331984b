"""`cnntool train`: spec + data -> a trained bundle; `--resume` continues a saved run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cnntool.cli.output import EpochProgress, note, print_json
from cnntool.errors import CnntoolError

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def train(
    spec: Annotated[
        Path | None,
        typer.Argument(help="Network spec (JSON file); omit it with --resume.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Bundle file to write (.cnnb) [with --resume: that bundle].",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset: mnist-sample, mnist, fashion-mnist, a folder (IDX files or one sub-folder of "
            "images per class) or an .npz [spec]."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs to train in all [spec or 5].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Examples per step [spec or 32].")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate [spec, else 0.01 sgd / 0.001 adam].")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adam or adamw [spec or sgd].")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum [spec or 0.9].")] = None,
    nesterov: Annotated[
        bool | None, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum.")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Weight decay [spec, else 0, 0.01 for adamw].")
    ] = None,
    lr_schedule: Annotated[
        str | None, typer.Option(help="constant, step, cosine or plateau [spec or constant].")
    ] = None,
    lr_step_size: Annotated[
        int | None, typer.Option(help="step schedule: epochs between decays [spec or 10].")
    ] = None,
    lr_gamma: Annotated[
        float | None, typer.Option(help="step and plateau schedules: decay factor [spec or 0.1].")
    ] = None,
    lr_patience: Annotated[
        int | None,
        typer.Option(help="plateau schedule: epochs without improvement before a decay [spec or 10]."),
    ] = None,
    lr_min: Annotated[
        float | None, typer.Option(help="cosine and plateau schedules: the lowest rate [spec or 0].")
    ] = None,
    warmup_epochs: Annotated[
        int | None, typer.Option(help="Epochs of linear warm-up to the learning rate [spec or 0].")
    ] = None,
    early_stopping: Annotated[
        int | None,
        typer.Option(
            metavar="PATIENCE",
            help="Stop after this many epochs without improvement of --monitor and keep the best "
            "epoch's weights [spec or off].",
        ),
    ] = None,
    monitor: Annotated[
        str | None,
        typer.Option(
            help="val_loss, val_accuracy, loss or accuracy, for early stopping and plateau [val_loss]."
        ),
    ] = None,
    min_delta: Annotated[
        float | None,
        typer.Option(help="Smallest change of --monitor that counts as improvement [spec or 0]."),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(metavar="N", help="Write the bundle, resumable, every N epochs [spec or 0: off]."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            metavar="BUNDLE",
            help="Continue the run saved in BUNDLE (a checkpoint); --epochs is the total.",
            show_default=False,
        ),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Write one JSON line per epoch to FILE as training runs (progress itself goes to stderr).",
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            metavar="BUNDLE",
            help="Start from BUNDLE's weights (fine-tuning): layers of the same name and shapes are "
            "loaded, the others initialised; a report says which.",
            show_default=False,
        ),
    ] = None,
    freeze: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="Keep this layer's parameters fixed (repeat, or separate names with commas).",
            show_default=False,
        ),
    ] = None,
    augment_shift: Annotated[
        int | None,
        typer.Option(
            metavar="PIXELS", help="Augment: shift images by up to PIXELS (edges repeated) [spec or 0]."
        ),
    ] = None,
    augment_crop_padding: Annotated[
        int | None,
        typer.Option(
            metavar="PIXELS", help="Augment: pad by PIXELS of zeros, crop back at random [spec or 0]."
        ),
    ] = None,
    augment_flip: Annotated[
        bool | None,
        typer.Option("--augment-flip/--no-augment-flip", help="Augment: flip half the images left-right."),
    ] = None,
    augment_rotation: Annotated[
        float | None,
        typer.Option(metavar="DEGREES", help="Augment: rotate by up to DEGREES either way [spec or 0]."),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option(
            metavar="balanced|W1,W2,...",
            help="Weigh each class in the training loss: 'balanced' (inverse class frequency) or one "
            "weight per class [spec or none].",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for weights, shuffling, dropout and the split [spec or 0].")
    ] = None,
    val_split: Annotated[
        float | None,
        typer.Option(
            help="Fraction of training data held out for validation [spec or 0.1]; an image folder's "
            "val/ replaces it."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Threads for numba and BLAS [CNNTOOL_THREADS or all CPUs; with --resume the stored count].",
        ),
    ] = None,
    classes_from_data: Annotated[
        bool,
        typer.Option(
            "--classes-from-data",
            help="Name the outputs with the dataset's classes instead of the spec's \"classes\".",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="End with one JSON document on stdout.")
    ] = False,
) -> None:
    """Train a network on a dataset and save it as one bundle file.

    Progress and messages go to stderr (a bar on a terminal, one line per epoch otherwise);
    --log FILE keeps one JSON line per epoch, and --json puts the result on stdout. Ctrl-C
    saves a checkpoint at the next step and exits with 130; --resume continues it.
    """
    from cnntool.training.run import TrainingInterrupted, TrainingRun

    overrides = {
        "data": data,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "lr_schedule": lr_schedule,
        "lr_step_size": lr_step_size,
        "lr_gamma": lr_gamma,
        "lr_patience": lr_patience,
        "lr_min": lr_min,
        "warmup_epochs": warmup_epochs,
        "early_stopping": early_stopping,
        "monitor": monitor,
        "min_delta": min_delta,
        "checkpoint_every": checkpoint_every,
        "log": log,
        "seed": seed,
        "val_split": val_split,
        "augment_shift": augment_shift,
        "augment_crop_padding": augment_crop_padding,
        "augment_flip": augment_flip,
        "augment_rotation": augment_rotation,
        "class_weights": parse_class_weights(class_weights),
        "init_from": str(init_from) if init_from is not None else None,
        "freeze": [name for item in freeze for name in item.split(",") if name] if freeze else None,
    }
    if resume is not None:
        run = TrainingRun.resume(resume, overrides, out=out, threads=threads, spec=spec)
    else:
        if spec is None:
            raise CnntoolError("missing SPEC: give a network spec file, or --resume BUNDLE to continue a run")
        if out is None:
            raise CnntoolError("missing --out: give the bundle file to write, such as --out model.cnnb")
        run = TrainingRun.prepare(spec, out, overrides, threads=threads, classes_from_data=classes_from_data)
    state = run.trainer.state
    options = run.options
    schedule = "" if options.lr_schedule == "constant" else f" ({options.lr_schedule} schedule)"
    from cnntool.model.execution import execution_line

    execution = run.net.execution()
    note(
        f"training {run.net.name!r} ({run.net.num_params} parameters) on {run.dataset.name}: "
        f"{len(run.x_train)} training, {len(run.x_val)} validation, {len(run.dataset.x_test)} test images; "
        f"{options.optimizer}, lr {run.lr}{schedule}, batch {options.batch_size}, {run.threads} threads; "
        + ("compiled" if execution["compiled"] else "layer by layer")
    )
    if not execution["compiled"]:  # which layer forces it, and what it costs
        note(execution_line(execution))
    for line in run.init_report:
        note(line)
    if options.freeze:
        frozen = sum(stop - start for start, stop in run.optimizer.frozen)
        note(f"frozen: {', '.join(options.freeze)} ({frozen} parameters)")
    if run.resumed_from is not None:
        where = f", batch {state.batch} of {run.trainer.batches}" if state.batch else ""
        note(f"resuming {run.out} after epoch {state.epoch}{where}, up to epoch {options.epochs}")
    with EpochProgress(options.epochs, batch_size=options.batch_size) as progress:
        progress.epoch = state.epoch + 1
        try:
            result = run.run(
                on_epoch=progress.on_epoch, on_batch=progress.on_batch, on_compile=progress.on_compile
            )
        except TrainingInterrupted as stop:
            where = f", batch {stop.batch} of {stop.batches}" if stop.batch else ""
            note(
                f"interrupted: checkpoint saved to {stop.path} after epoch {stop.epoch}{where}; "
                f"continue with: cnntool train --resume {stop.path}"
            )
            raise typer.Exit(130) from None
    if result["status"] == "stopped_early":
        note(
            f"stopped early after epoch {result['epochs']}: {options.monitor} last improved at epoch "
            f"{result['best_epoch']}, whose weights the bundle holds"
        )
    elif result["best_epoch"] is not None:
        note(f"best epoch by {options.monitor}: {result['best_epoch']}, whose weights the bundle holds")
    test = result["test"]
    if test is not None:
        note(f"test: loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f}")
    note(f"saved {result['bundle']}")
    if json_output:
        print_json(result)


def parse_class_weights(text: str | None) -> Any:
    """`--class-weights`: "balanced", or numbers separated by commas (checked with the
    other options)."""
    if text is None or text.strip() == "balanced":
        return None if text is None else "balanced"
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CnntoolError(
            f"Invalid value for `--class-weights`. Expected 'balanced' or numbers separated by commas. "
            f"Received: {text!r}"
        ) from None
