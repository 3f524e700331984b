"""A whole training run as the command line does it: options, data, network, optimizer,
fit, test score, bundle with provenance. Usable from Python too:

    run = TrainingRun.prepare("models/seed_cnn.json", "seed.cnnb", {"data": "mnist-sample"})
    result = run.run()
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnntool.errors import CnntoolError, DataError, SpecError


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

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @classmethod
    def prepare(
        cls, spec_source: Any, out: str | Path, overrides: dict[str, Any], *, threads: int | None = None
    ) -> TrainingRun:
        """Validate everything that can be wrong before the first step: spec, options,
        output folder, dataset and its fit to the spec."""
        from cnntool.data import load_dataset, preprocessing_for, split_validation
        from cnntool.network import Network
        from cnntool.optim import OPTIMIZERS
        from cnntool.spec import TrainingConfig, validate_spec
        from cnntool.threads import set_threads

        out = Path(out)
        if not out.parent.is_dir():
            raise CnntoolError(f"cannot write {out}: folder {out.parent} does not exist")
        if out.is_dir():
            raise CnntoolError(f"cannot write {out}: it is a folder; give a file name such as model.cnnb")
        spec = validate_spec(spec_source)
        options = merge_options(spec.training, overrides, TrainingConfig)
        if options.data is None:
            raise DataError("no dataset given: pass --data (mnist-sample, a folder of IDX files or an .npz)")
        dataset = load_dataset(options.data)
        spec = fit_spec_to_data(spec, dataset)
        spec = spec.model_copy(update={"training": options})
        count = set_threads(threads)
        net = Network.build(spec, np.random.default_rng(options.seed))
        optimizer = make_optimizer(OPTIMIZERS[options.optimizer], net, options)
        x_train, y_train, x_val, y_val = split_validation(
            dataset.x_train, dataset.y_train, options.val_split, options.seed
        )
        return cls(
            spec,
            options,
            out,
            dataset,
            net,
            optimizer,
            x_train,
            y_train,
            x_val,
            y_val,
            preprocessing_for(dataset.x_train),
            count,
        )

    def run(self, on_epoch: Any = None, on_batch: Any = None) -> dict[str, Any]:
        """Train, score on the test split, save the bundle; return what the CLI prints."""
        from cnntool.bundle import model_digest, save_bundle
        from cnntool.train import evaluate, fit

        started = time.time()
        history = fit(
            self.net,
            self.optimizer,
            (self.x_train, self.y_train),
            epochs=self.options.epochs,
            batch_size=self.options.batch_size,
            preprocessing=self.preprocessing,
            seed=self.options.seed,
            validation=(self.x_val, self.y_val) if len(self.x_val) else None,
            on_epoch=on_epoch,
            on_batch=on_batch,
        )
        test = None
        if len(self.dataset.x_test):
            scores = evaluate(self.net, self.dataset.x_test, self.dataset.y_test, self.preprocessing)
            test = {
                "loss": scores["loss"],
                "accuracy": scores["accuracy"],
                "examples": len(self.dataset.x_test),
            }
        meta = {
            "history": history,
            "dataset": self.dataset.info,
            "preprocessing": self.preprocessing,
            "seed": self.options.seed,
            "training": self.options.model_dump(mode="json"),
            "threads": self.threads,
            "test": test,
            "train_seconds": time.time() - started,
        }
        path = save_bundle(self.net, self.out, meta=meta, optimizer=self.optimizer)
        return {
            "bundle": str(path),
            "name": self.net.name,
            "total_params": self.net.num_params,
            "digest": model_digest(self.net.params(), self.net.state()),
            "history": history,
            "test": test,
        }


def merge_options(from_spec: Any, overrides: dict[str, Any], model: Any) -> Any:
    """Spec's training section, overridden by every option given on the command line."""
    base = from_spec.model_dump() if from_spec is not None else {}
    base.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return model.model_validate(base)
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            from cnntool.spec import format_errors

            raise SpecError("invalid training options: " + format_errors(exc, base)) from None
        raise


def fit_spec_to_data(spec: Any, dataset: Any) -> Any:
    """Check the spec's input shape and classes against the dataset; take the class names
    from the dataset when the spec has none."""
    from cnntool.spec import validate_spec

    if tuple(spec.input_shape) != tuple(dataset.input_shape):
        raise SpecError(
            f"the spec's input_shape {list(spec.input_shape)} does not match the dataset's images "
            f'{list(dataset.input_shape)} ({dataset.name}); set "input_shape": {list(dataset.input_shape)}'
        )
    if spec.classes is None:
        data = spec.model_dump(mode="json", exclude_none=True)
        data["classes"] = list(dataset.classes)
        try:
            return validate_spec(data)
        except SpecError as exc:
            raise SpecError(
                f"{exc} (the dataset {dataset.name} has {len(dataset.classes)} classes)"
            ) from None
    if len(spec.classes) < len(dataset.classes):
        raise SpecError(
            f"the dataset {dataset.name} has {len(dataset.classes)} classes but the spec names "
            f"{len(spec.classes)}"
        )
    return spec


def make_optimizer(kind: Any, net: Any, options: Any) -> Any:
    """The optimizer with the options given; unset ones keep the optimizer's own defaults."""
    from cnntool.optim import SGD

    kwargs: dict[str, Any] = {}
    if options.lr is not None:
        kwargs["lr"] = options.lr
    if options.weight_decay is not None:
        kwargs["weight_decay"] = options.weight_decay
    if kind is SGD:
        kwargs.update(momentum=options.momentum, nesterov=options.nesterov)
    return kind(net, **kwargs)
