"""A whole training run as the command line does it: options, data, network, optimizer,
schedule, early stopping, training, test score, and a bundle with provenance. Usable from
Python too:

    run = TrainingRun.prepare("models/seed_cnn.json", "seed.cnnb", {"data": "mnist-sample"})
    result = run.run()
    run = TrainingRun.resume("seed.cnnb", {"epochs": 10})   # continue it up to 10 epochs
    result = run.run()

Checkpoints (every `checkpoint_every` epochs, and on Ctrl-C) and the final bundle are the
same kind of file, written atomically to the output path: the model (under early stopping,
the best epoch's weights), the optimizer's state, and in `meta.resume` where training
stands (see cnntool.training.loop.Trainer.state_dict). When the model's weights are not the ones
training continues from, those go beside the optimizer's slots as `current_params` and
`current_state`. Resuming therefore continues exactly where the run stopped: same seed and
threads give the same final weights as a run that was never interrupted.
"""

from __future__ import annotations

import difflib
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import ValidationError

from cnntool.bundle import load_bundle, model_digest, save_bundle
from cnntool.data import load_dataset, preprocessing_for, split_validation
from cnntool.errors import CnntoolError, DataError, SpecError, short_repr
from cnntool.model.network import Network
from cnntool.model.spec import TrainingConfig, format_errors, validate_spec
from cnntool.system.threads import set_threads
from cnntool.training.loop import EarlyStopping, Trainer, evaluate
from cnntool.training.optim import OPTIMIZERS, SGD
from cnntool.training.schedules import make_schedule

# Options a resumed run may change; any other would make it a different run. A new `lr`
# restarts the schedule from it and is noted in the history (`lr_changed`).
RESUMABLE = ("epochs", "checkpoint_every", "log", "data", "lr")
TRAINING_SLOTS = ("current_params", "current_state")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary; a checkpoint was saved to `path`."""

    def __init__(self, path: Path, epoch: int, batch: int, batches: int) -> None:
        super().__init__(f"checkpoint saved to {path}")
        self.path, self.epoch, self.batch, self.batches = path, epoch, batch, batches


@dataclass
class TrainingRun:
    spec: Any
    options: Any
    out: Path
    dataset: Any
    net: Any
    optimizer: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    preprocessing: dict
    threads: int
    trainer: Any = None
    resumed_from: dict | None = field(default=None)
    init_report: list[str] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @classmethod
    def prepare(
        cls,
        spec_source: Any,
        out: str | Path,
        overrides: dict[str, Any],
        *,
        threads: int | None = None,
        classes_from_data: bool = False,
    ) -> TrainingRun:
        """Validate everything that can be wrong before the first step: spec, options,
        output folder, dataset and its fit to the spec."""

        out = check_output(Path(out))
        spec = validate_spec(spec_source)
        options = merge_options(spec.training, overrides, TrainingConfig)
        if options.data is None:
            raise DataError(
                "no dataset given: pass --data (mnist-sample, mnist, fashion-mnist, a folder of IDX files "
                "or of class sub-folders of images, or an .npz), or set data in the spec's training section"
            )
        check_log(options.log)
        dataset = load_dataset(options.data)
        spec = fit_spec_to_data(spec, dataset, classes_from_data)
        spec = spec.model_copy(update={"training": options})
        count = set_threads(threads)
        net = Network.build(spec, np.random.default_rng(options.seed))
        report = init_from_bundle(net, Path(options.init_from)) if options.init_from else []
        run = cls.assemble(spec, options, out, dataset, net, count)
        run.init_report = report
        run.trainer = run.make_trainer()
        return run

    @classmethod
    def resume(
        cls,
        bundle_path: str | Path,
        overrides: dict[str, Any],
        *,
        out: str | Path | None = None,
        threads: int | None = None,
        spec: Any = None,
    ) -> TrainingRun:
        """Continue the run saved in a bundle (a checkpoint, or a finished run to extend
        with a larger `epochs`), writing to `out` (default: the bundle itself). Only the
        options in RESUMABLE may differ from the stored ones; the thread count defaults to
        the stored one, which bit-identical results need. A `spec` given too (the command
        rerun with --resume added) must be the bundle's own; its training section counts as
        options, below `overrides`."""

        path = Path(bundle_path)
        bundle = load_bundle(path)
        saved = bundle.meta.get("resume")
        if not isinstance(saved, dict) or not bundle.optimizer:
            raise CnntoolError(
                f"{path}: holds no training state to resume (it was not written by `cnntool train`); "
                "start a new run with `cnntool train SPEC --out FILE`"
            )
        try:
            stored = merge_options(None, dict(bundle.meta.get("training") or {}), TrainingConfig)
        except SpecError as exc:
            raise CnntoolError(f"{path}: cannot resume: the stored {exc}") from None
        if spec is not None:
            overrides = {**spec_options(check_same_spec(spec, bundle.network.spec, path)), **{
                key: value for key, value in overrides.items() if value is not None
            }}  # fmt: skip
        refused = [
            f"--{key.replace('_', '-')} (stored {getattr(stored, key)!r}, given {value!r})"
            for key, value in overrides.items()
            if value is not None and key not in RESUMABLE and value != getattr(stored, key)
        ]
        if refused:
            raise CnntoolError(
                f"cannot change {', '.join(refused)} when resuming {path}: the run would no longer be the "
                "one that was saved; only --epochs, --checkpoint-every, --log, --data and --lr may change"
            )
        options = merge_options(stored, {key: overrides.get(key) for key in RESUMABLE}, TrainingConfig)
        status, done = saved.get("status"), saved.get("epoch")
        if status == "stopped_early":
            raise CnntoolError(
                f"{path}: training stopped early after epoch {done} ({options.monitor} did not improve for "
                f"{options.early_stopping} epochs); there is nothing to resume"
            )
        if isinstance(done, int) and done >= options.epochs:
            raise CnntoolError(
                f"{path}: already trained {done} of {options.epochs} epochs; pass --epochs with a total "
                f"above {done} to train further"
            )
        check_log(options.log)
        out = check_output(Path(out) if out is not None else path)
        dataset = load_dataset(options.data)
        check_same_data(bundle.meta.get("dataset"), dataset, path)
        net = bundle.network
        net.spec = net.spec.model_copy(update={"training": options})
        stored_threads = bundle.meta.get("threads")
        if threads is None and isinstance(stored_threads, int) and stored_threads >= 1:
            threads = stored_threads
        run = cls.assemble(net.spec, options, out, dataset, net, set_threads(threads))
        slots = {
            name: bundle.optimizer["slots"][name]
            for name in TRAINING_SLOTS
            if name in bundle.optimizer["slots"]
        }
        try:
            run.optimizer.load_state_dict(bundle.optimizer)
            run.trainer = run.make_trainer()
            run.trainer.load_state_dict(saved, list(bundle.meta.get("history") or []), slots)
            if options.lr is not None and options.lr != stored.lr:
                run.trainer.change_lr(options.lr, bundle.optimizer["hyper"]["lr"])
        except CnntoolError as exc:
            raise CnntoolError(f"{path}: cannot resume: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CnntoolError(
                f"{path}: cannot resume: the stored training state is malformed ({type(exc).__name__}: {exc})"
            ) from None
        run.resumed_from = saved
        return run

    @classmethod
    def assemble(
        cls, spec: Any, options: Any, out: Path, dataset: Any, net: Any, threads: int
    ) -> TrainingRun:

        optimizer = make_optimizer(OPTIMIZERS[options.optimizer], net, options)
        optimizer.freeze(frozen_keys(net, options.freeze))
        if dataset.x_val is not None:  # the source's own validation split (a val/ folder)
            x_train, y_train, x_val, y_val = dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val
        else:
            x_train, y_train, x_val, y_val = split_validation(
                dataset.x_train, dataset.y_train, options.val_split, options.seed
            )
        net.class_weights[:] = class_weights(options.class_weights, y_train, len(net.class_weights))
        return cls(
            spec, options, out, dataset, net, optimizer, x_train, y_train, x_val, y_val,
            preprocessing_for(dataset), threads,
        )  # fmt: skip

    def make_trainer(self) -> Any:

        options = self.options
        early_stopping = (
            EarlyStopping(options.monitor, options.early_stopping, options.min_delta)
            if options.early_stopping is not None
            else None
        )
        return Trainer(
            self.net, self.optimizer, (self.x_train, self.y_train), batch_size=options.batch_size,
            preprocessing=self.preprocessing, seed=options.seed,
            validation=(self.x_val, self.y_val) if len(self.x_val) else None,
            schedule=make_schedule(options, self.optimizer.lr), early_stopping=early_stopping,
            monitor=options.monitor, augment=options,
        )  # fmt: skip

    def run(self, on_epoch: Any = None, on_batch: Any = None, on_compile: Any = None) -> dict[str, Any]:
        """Train (checkpointing as asked), score on the test split, save the bundle; return
        what the CLI prints. Ctrl-C stops at the next step boundary, saves a checkpoint and
        raises TrainingInterrupted."""

        trainer = self.trainer

        def checkpoint(status: str = "running") -> Path:
            slots = trainer.publish()
            try:
                return self.write(status, slots, None)
            finally:
                trainer.unpublish(slots)

        with open_log(self.options.log, trainer.state.history) as log:

            def epoch_done(record: dict) -> None:
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if on_epoch is not None:
                    on_epoch(record)

            with stop_on_interrupt(trainer):
                status = trainer.run(
                    self.options.epochs, on_epoch=epoch_done, on_batch=on_batch, on_checkpoint=checkpoint,
                    checkpoint_every=self.options.checkpoint_every, on_compile=on_compile,
                )  # fmt: skip
        if status == "interrupted":
            path = checkpoint("interrupted")
            raise TrainingInterrupted(path, trainer.state.epoch, trainer.state.batch, trainer.batches)
        slots = trainer.publish()
        test = self.test_scores()
        path = self.write(status, slots, test)
        early = trainer.early_stopping
        return {
            "bundle": str(path),
            "name": self.net.name,
            "total_params": self.net.num_params,
            "digest": model_digest(self.net.params(), self.net.state()),
            "status": status,
            "epochs": trainer.state.epoch,
            "best_epoch": early.best_epoch if early is not None else None,
            "history": trainer.state.history,
            "compile_seconds": trainer.compile_seconds,
            "execution": self.net.execution(),
            "test": test,
        }

    def test_scores(self) -> dict[str, Any] | None:

        if not len(self.dataset.x_test):
            return None
        scores = evaluate(self.net, self.dataset.x_test, self.dataset.y_test, self.preprocessing)
        return {"loss": scores["loss"], "accuracy": scores["accuracy"], "examples": len(self.dataset.x_test)}

    def write(self, status: str, slots: dict, test: dict | None) -> Path:
        """Save the network as it is now, with the optimizer, `slots` and the training state."""

        trainer = self.trainer
        history = trainer.state.history
        meta = {
            "history": history,
            "dataset": self.dataset.info,
            "preprocessing": self.preprocessing,
            "seed": self.options.seed,
            "training": self.options.model_dump(mode="json"),
            "threads": self.threads,
            "test": test,
            "train_seconds": sum(record["seconds"] for record in history) + trainer.state.seconds,
            # Compiling (or loading) the kernels, by the process that wrote this bundle.
            "compile_seconds": trainer.compile_seconds,
            "resume": {**trainer.state_dict(), "status": status},
        }
        if trainer.early_stopping is not None:
            meta["best_epoch"] = trainer.early_stopping.best_epoch or None
        return save_bundle(self.net, self.out, meta=meta, optimizer=WithTrainingSlots(self.optimizer, slots))


class WithTrainingSlots:
    """An optimizer's state_dict with more per-parameter arrays beside its own slots, as
    save_bundle stores them (the optimizer's load_state_dict ignores slots it lacks)."""

    def __init__(self, optimizer: Any, slots: dict[str, dict[str, np.ndarray]]) -> None:
        self.optimizer, self.slots = optimizer, slots

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        state["slots"] = {**state["slots"], **self.slots}
        return state


@contextmanager
def stop_on_interrupt(trainer: Any) -> Iterator[None]:
    """While training: the first Ctrl-C (SIGINT) lets the current step finish and stops the
    trainer; a second one interrupts at once. Only the main thread receives signals, so
    elsewhere Ctrl-C keeps its usual effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def open_log(path: str | None, history: list[dict]) -> Iterator[IO[str] | None]:
    """The JSON-lines log, rewritten with the epochs done so far (so a resumed run's log
    reads like an uninterrupted one's); None without a path."""
    if path is None:
        yield None
        return
    try:
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CnntoolError(f"cannot write the log {path}: {exc.strerror or exc}") from None
    try:
        for record in history:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        yield handle
    finally:
        handle.close()


def check_same_spec(source: Any, stored: Any, path: Path) -> Any:
    """The spec `source`, validated, when it describes the network stored in the bundle at
    `path` (its training section aside, and its classes when it names none); else a
    CnntoolError saying what differs."""

    given = validate_spec(source)
    differences = spec_differences(stored, given)
    if differences:
        raise CnntoolError(
            f"{source} is not the spec {path} was trained from: {'; '.join(differences)}; resume with "
            f"`cnntool train --resume {path}` alone, or train the changed spec with a new --out"
        )
    return given


def spec_differences(stored: Any, given: Any) -> list[str]:
    """What differs between two validated specs, by field and by layer (index and name)."""
    differences = []
    for key in ("name", "input_shape", "classes"):
        old, new = getattr(stored, key), getattr(given, key)
        if key == "classes" and new is None:
            continue
        if (list(old) if isinstance(old, tuple) else old) != (list(new) if isinstance(new, tuple) else new):
            differences.append(f"{key} (stored {short_repr(old)}, given {short_repr(new)})")
    old_layers = [layer.model_dump(mode="json") for layer in stored.layers]
    new_layers = [layer.model_dump(mode="json") for layer in given.layers]
    if len(old_layers) != len(new_layers):
        differences.append(f"{len(old_layers)} layers stored, {len(new_layers)} given")
    for index, (old, new) in enumerate(zip(old_layers, new_layers, strict=False)):
        if old == new:
            continue
        if old.get("type") != new.get("type"):
            differences.append(
                f"layer {index} is {old.get('type')} {old.get('name')!r} in the bundle, "
                f"{new.get('type')} {new.get('name')!r} in the spec"
            )
            continue
        fields = [
            f"{field} (stored {short_repr(old.get(field))}, given {short_repr(new.get(field))})"
            for field in sorted(set(old) | set(new))
            if old.get(field) != new.get(field)
        ]
        differences.append(f"layer {index} {old.get('name')!r}: {', '.join(fields)}")
    return differences


def spec_options(spec: Any) -> dict[str, Any]:
    """The training options a spec sets explicitly."""
    return spec.training.model_dump(exclude_unset=True) if spec.training is not None else {}


def check_output(out: Path) -> Path:
    if not out.parent.is_dir():
        raise CnntoolError(f"cannot write {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise CnntoolError(f"cannot write {out}: it is a folder; give a file name such as model.cnnb")
    return out


def check_log(log: str | None) -> None:
    if log is None:
        return
    path = Path(log)
    if not path.parent.is_dir():
        raise CnntoolError(f"cannot write the log {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise CnntoolError(
            f"cannot write the log {path}: it is a folder; give a file name such as train.jsonl"
        )


def check_same_data(stored: Any, dataset: Any, path: Path) -> None:
    """Refuse to resume on data other than the run's (same files by sha256, same size)."""
    if not isinstance(stored, dict):
        return

    def fingerprint(info: dict) -> tuple:
        files = listed if isinstance(listed := info.get("files"), list) else []
        return sorted(str(f.get("sha256")) for f in files if isinstance(f, dict)), info.get("train_size")

    if fingerprint(stored) != fingerprint(dataset.info):
        raise DataError(
            f"{path} was trained on {stored.get('name')!r} but --data {dataset.name!r} has other files; "
            "resume with the same data"
        )


def merge_options(from_spec: Any, overrides: dict[str, Any], model: Any) -> Any:
    """Spec's training section, overridden by every option given on the command line."""
    base = from_spec.model_dump() if from_spec is not None else {}
    base.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return model.model_validate(base)
    except Exception as exc:
        if isinstance(exc, ValidationError):
            raise SpecError("invalid training options: " + format_errors(exc, base)) from None
        raise


def fit_spec_to_data(spec: Any, dataset: Any, classes_from_data: bool = False) -> Any:
    """Check the spec's input shape and classes against the dataset; take the class names
    from the dataset when the spec has none (or `classes_from_data`). When both name classes
    they must agree: a model whose outputs carry another dataset's names predicts wrong labels."""

    if tuple(spec.input_shape) != tuple(dataset.input_shape):
        raise SpecError(
            f"the spec's input_shape {list(spec.input_shape)} does not match the dataset's images "
            f'{list(dataset.input_shape)} ({dataset.name}); set "input_shape": {list(dataset.input_shape)}'
        )
    theirs = list(dataset.classes)
    if spec.classes is None or (classes_from_data and list(spec.classes) != theirs):
        data = spec.model_dump(mode="json", exclude_none=True)
        data["classes"] = theirs
        try:
            return validate_spec(data)
        except SpecError as exc:
            raise SpecError(f"{exc} (the dataset {dataset.name} has {len(theirs)} classes)") from None
    if len(spec.classes) < len(theirs):
        raise SpecError(
            f"the dataset {dataset.name} has {len(theirs)} classes but the spec names {len(spec.classes)}"
        )
    if dataset.named_classes and list(spec.classes[: len(theirs)]) != theirs:
        raise SpecError(
            f"the spec's classes ({', '.join(spec.classes)}) are not the classes of {dataset.name} "
            f'({", ".join(theirs)}); remove "classes" from the spec or pass --classes-from-data to take '
            "the dataset's, or fix the spec's list"
        )
    return spec


def init_from_bundle(net: Any, path: Path) -> list[str]:
    """Copy into `net` the parameters and state of every layer of the bundle at `path` that
    has the same name and the same shapes (fine-tuning); the rest keep their fresh
    initialisation. Returns the report lines: what was loaded, changed and new."""

    try:
        source = load_bundle(path).network
    except CnntoolError as exc:
        raise CnntoolError(f"--init-from: {exc}") from None
    theirs = {layer.name: layer for layer in source.layers}
    loaded, changed, new = [], [], []
    count = 0
    for layer in net.layers:
        arrays = {**layer.params, **layer.state}
        if not arrays:
            continue
        other = theirs.get(layer.name)
        if other is None:
            new.append(layer.name)
            continue
        their_arrays = {**other.params, **other.state}
        shapes = {key: tuple(value.shape) for key, value in arrays.items()}
        their_shapes = {key: tuple(value.shape) for key, value in their_arrays.items()}
        if shapes != their_shapes:
            differing = [
                f"{key} {their_shapes.get(key)} -> {shape}"
                for key, shape in shapes.items()
                if their_shapes.get(key) != shape
            ]
            changed.append(f"{layer.name} ({', '.join(differing) or 'other parameters'})")
            continue
        for key, value in arrays.items():
            np.copyto(value, their_arrays[key])
        loaded.append(layer.name)
        count += sum(value.size for value in layer.params.values())
    if not loaded:
        raise CnntoolError(
            f"--init-from {path}: no layer of {net.name!r} matches one of the bundle's by name and shapes "
            f"(the bundle has {', '.join(theirs)}); name the layers to reuse as the bundle does"
        )
    report = [f"initialised from {path}: loaded {', '.join(loaded)} ({count} parameters)"]
    if changed:
        report.append(f"  other shapes, initialised anew: {'; '.join(changed)}")
    if new:
        report.append(f"  new, initialised: {', '.join(new)}")
    return report


def frozen_keys(net: Any, names: list[str]) -> list[str]:
    """The parameter keys of the layers `names`; an unknown name or one without parameters
    is an error naming the nearest layer."""

    with_params = [layer.name for layer in net.layers if layer.params]
    keys = []
    for name in names:
        if name not in with_params:
            nearest = difflib.get_close_matches(name, with_params, n=1, cutoff=0.4)
            hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
            exists = any(layer.name == name for layer in net.layers)
            kind = "has no parameters" if exists else "is not a layer"
            raise CnntoolError(
                f"--freeze {name}: {kind} of {net.name!r} (layers with parameters: "
                f"{', '.join(with_params)}){hint}"
            )
        keys += [key for key in net.param_offsets if key.startswith(f"{name}.")]
    return keys


def make_optimizer(kind: Any, net: Any, options: Any) -> Any:
    """The optimizer with the options given; unset ones keep the optimizer's own defaults."""

    kwargs: dict[str, Any] = {}
    if options.lr is not None:
        kwargs["lr"] = options.lr
    if options.weight_decay is not None:
        kwargs["weight_decay"] = options.weight_decay
    if kind is SGD:
        kwargs.update(momentum=options.momentum, nesterov=options.nesterov)
    return kind(net, **kwargs)


def class_weights(setting: Any, labels: np.ndarray, classes: int) -> np.ndarray:
    """The weight of each class in the training loss: ones, the given list, or "balanced"
    (scikit-learn's and Keras's: n / (classes * count), a class absent from the training
    split weighing 1)."""
    if setting is None:
        return np.ones(classes, np.float32)
    if setting == "balanced":
        counts = np.bincount(np.asarray(labels, np.int64), minlength=classes)[:classes]
        weights = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 1.0)
        return weights.astype(np.float32)
    if len(setting) != classes:
        raise CnntoolError(
            f"Invalid value for `class_weights`. Expected one weight per class ({classes}). "
            f"Received: {len(setting)} weights"
        )
    return np.asarray(setting, np.float32)
