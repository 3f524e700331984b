"""The training loop: shuffled mini-batches, forward, loss, backward, update, per epoch.

Batches are gathered from the (uint8 or float) dataset into one preallocated float32
buffer, with the recorded preprocessing applied on the way, so an epoch never copies the
whole set and a step allocates nothing. A step is one `net.train_step` and one
`optimizer.step()`; the learning-rate schedule sets `optimizer.lr` between them.

A `Trainer` knows exactly where it is (`TrainingState`: epochs and batches done, the
shuffling generator's state, the dropout step, the partial sums of the epoch, the
schedule's and early stopping's state), so a run saved at any step boundary and resumed
takes the same steps, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnntool.errors import CnntoolError, DataError
from cnntool.inference.evaluate import BatchSource, check_labels, evaluate, score
from cnntool.inference.warmup import compile_for_training, compile_in_child
from cnntool.model.spec_fields import MONITORS
from cnntool.training.augmentation import Augmenter
from cnntool.training.schedules import Schedule

__all__ = [
    "MONITORS",
    "BatchCallback",
    "BatchSource",
    "CompileCallback",
    "EarlyStopping",
    "EpochCallback",
    "Trainer",
    "TrainingDiverged",
    "TrainingState",
    "evaluate",
    "fit",
    "score",
]

EpochCallback = Callable[[dict], None]
BatchCallback = Callable[[int, int], None]
# Called with None before the kernels are compiled (or loaded from the cache), then with
# the seconds it took.
CompileCallback = Callable[[float | None], None]


class TrainingDiverged(CnntoolError):
    """The loss became NaN or infinite."""


class EarlyStopping:
    """Keras's EarlyStopping with restore_best_weights: after each epoch, `monitor` improves
    when it beats the best value so far by more than `min_delta` (lower for losses, higher
    for accuracies); training stops once it has not improved for `patience` epochs. The
    best epoch's weights are kept, and the trainer publishes them at the end."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0) -> None:
        if monitor not in MONITORS:
            raise CnntoolError(
                f"Invalid value for `monitor`. Expected one of {', '.join(MONITORS)}. Received: {monitor!r}"
            )
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = "max" if monitor.endswith("accuracy") else "min"
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped = False

    def update(self, record: dict) -> bool:
        """Take one epoch's record; True when it is the best so far."""
        value = record.get(self.monitor)
        if value is None or not math.isfinite(value):
            raise CnntoolError(
                f"early stopping monitors {self.monitor!r}, which epoch {record['epoch']} lacks"
            )
        better = (
            self.best is None
            or (self.mode == "min" and value < self.best - self.min_delta)
            or (self.mode == "max" and value > self.best + self.min_delta)
        )
        if better:
            self.best, self.best_epoch, self.wait = value, record["epoch"], 0
        else:
            self.wait += 1
            self.stopped = self.wait >= self.patience
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self.stopped = bool(state["stopped"])


@dataclass
class TrainingState:
    """Where a run is, beyond its weights and optimizer: everything resuming needs."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed of the epoch in progress
    shuffle: dict | None = None  # the shuffling generator before the order of the epoch in progress
    random_step: int = 0  # the network's dropout step (cnntool.layers.base.RANDOM)
    loss_sum: float = 0.0  # sums over the batches done of the epoch in progress
    correct: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains `net` with `optimizer` on (x, y); see the module docs."""

    def __init__(
        self,
        net: Any,
        optimizer: Any,
        train: tuple[np.ndarray, np.ndarray],
        *,
        batch_size: int,
        preprocessing: dict,
        seed: int = 0,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        schedule: Any = None,
        early_stopping: EarlyStopping | None = None,
        monitor: str | None = None,
        augment: Any = None,
    ) -> None:

        self.net, self.optimizer, self.batch_size, self.seed = net, optimizer, int(batch_size), int(seed)
        self.source = BatchSource(*train, preprocessing)
        if len(self.source) == 0:
            raise DataError("the training set is empty")
        check_labels(self.source.y, net.output_shape[0], "training")
        self.val_source = (
            BatchSource(*validation, preprocessing) if validation is not None and len(validation[0]) else None
        )
        if self.val_source is not None:
            check_labels(self.val_source.y, net.output_shape[0], "validation")
        self.batches = math.ceil(len(self.source) / self.batch_size)
        # Random shifts, crops, flips and rotations of the training batches (options with
        # augment_* fields; off when None or all zero). Padding is raw pixel 0.
        augmenter = (
            Augmenter(augment, self.seed, -self.source.mean * self.source.inv_std) if augment else None
        )
        self.augmenter = augmenter if augmenter is not None and augmenter.active else None
        self.schedule = schedule or Schedule(optimizer.lr)
        self.schedule.steps_per_epoch = self.batches
        self.early_stopping = early_stopping
        # The metric early stopping and reduce-on-plateau watch.
        if monitor is None:
            monitor = early_stopping.monitor if early_stopping is not None else "val_loss"
        if monitor not in MONITORS:
            raise CnntoolError(
                f"Invalid value for `monitor`. Expected one of {', '.join(MONITORS)}. Received: {monitor!r}"
            )
        self.monitor = monitor
        watched = early_stopping is not None or self.schedule.name == "plateau"
        if watched and monitor.startswith("val_") and self.val_source is None:
            raise CnntoolError(
                f"{monitor} is monitored (early stopping or the plateau schedule) but there is no validation "
                "data; set a validation split (--val-split) or --monitor loss"
            )
        self.rng = np.random.default_rng(self.seed)
        self.state = TrainingState(shuffle=generator_state(self.rng))
        self.best_params: np.ndarray | None = None
        self.best_state: np.ndarray | None = None
        self.stop_requested = False
        self.compile_seconds: float | None = None  # this process's compile, kept out of epochs
        self.lr_changed: dict | None = None  # a new rate set on resuming, for the next record

    # --- running ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop at the next step boundary (safe to call from a signal handler)."""
        self.stop_requested = True

    def run(
        self,
        epochs: int,
        *,
        on_epoch: EpochCallback | None = None,
        on_batch: BatchCallback | None = None,
        on_checkpoint: Callable[[], None] | None = None,
        checkpoint_every: int = 0,
        on_compile: CompileCallback | None = None,
    ) -> str:
        """Train until `epochs` epochs are done in all; returns "finished", "stopped_early"
        (early stopping), or "interrupted" (request_stop; the state is at a step boundary).
        `on_checkpoint` is called after every `checkpoint_every`-th epoch but the last.
        The kernels are compiled before the first epoch's clock starts (`compile_seconds`),
        so an epoch's `seconds` are training alone."""
        net, optimizer, state, schedule, source = (
            self.net,
            self.optimizer,
            self.state,
            self.schedule,
            self.source,
        )
        n, batch_size = len(source), self.batch_size
        net.random[:] = (self.seed, state.random_step)
        if state.epoch < epochs and self.compile_seconds is None:
            if on_compile is not None:
                on_compile(None)
            started = time.perf_counter()
            size = min(batch_size, n)
            xb, _ = source.batch(np.arange(size), 0, size)  # the gathering kernel
            if self.augmenter is not None:
                self.augmenter(xb, 0)
            compile_in_child(net)  # so that this process runs the cached code (inference/warmup.py)
            compile_for_training(net, optimizer, size)
            self.compile_seconds = time.perf_counter() - started
            if on_compile is not None:
                on_compile(self.compile_seconds)
        while state.epoch < epochs:
            if self.early_stopping is not None and self.early_stopping.stopped:
                return "stopped_early"
            assert state.shuffle is not None  # the trainer starts and resumes with one
            set_generator_state(self.rng, state.shuffle)
            order = self.rng.permutation(n)
            started = time.perf_counter() - state.seconds
            epoch = state.epoch
            warming = schedule.warming_up(epoch)
            optimizer.lr = schedule.rate(epoch, state.batch)
            for index in range(state.batch, self.batches):
                if self.stop_requested:
                    break
                if warming:
                    optimizer.lr = schedule.rate(epoch, index)
                start = index * batch_size
                xb, yb = source.batch(order, start, min(batch_size, n - start))
                if self.augmenter is not None:
                    xb = self.augmenter(xb, epoch * self.batches + index)
                loss, correct = net.train_step(xb, yb)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged: the loss is {loss} at epoch {epoch + 1}, batch {index + 1}; "
                        "lower the learning rate (--lr)"
                    )
                optimizer.step()
                state.loss_sum += loss
                state.correct += correct
                state.batch = index + 1
                if on_batch is not None:
                    on_batch(index + 1, self.batches)
            state.random_step = int(net.random[1])
            state.seconds = time.perf_counter() - started
            if state.batch < self.batches:
                return "interrupted"
            record = self.end_epoch()
            if on_epoch is not None:
                on_epoch(record)
            stopping = self.early_stopping is not None and self.early_stopping.stopped
            if self.stop_requested and state.epoch < epochs:
                return "stopped_early" if stopping else "interrupted"
            due = checkpoint_every and state.epoch % checkpoint_every == 0 and state.epoch < epochs
            if on_checkpoint is not None and due and not stopping:
                on_checkpoint()
        if self.early_stopping is not None and self.early_stopping.stopped:
            return "stopped_early"
        return "finished"

    def change_lr(self, lr: float, previous: float) -> None:
        """Continue with the base learning rate `lr` instead of `previous` (resuming with a
        new --lr): the schedule restarts from it, and the next epoch's record notes it."""
        self.schedule.set_base_rate(lr)
        self.optimizer.lr = lr
        self.lr_changed = {"from": float(previous), "to": float(lr)}

    def end_epoch(self) -> dict:
        """Score the finished epoch, update early stopping and the schedule, move on."""
        state, n = self.state, len(self.source)
        record = {
            "epoch": state.epoch + 1,
            "loss": state.loss_sum / n,
            "accuracy": state.correct / n,
            "val_loss": None,
            "val_accuracy": None,
            "lr": self.optimizer.lr,
        }
        if self.lr_changed is not None:
            record["lr_changed"], self.lr_changed = self.lr_changed, None
        started = time.perf_counter()
        if self.val_source is not None:
            scores = score(self.net, self.val_source)
            record["val_loss"], record["val_accuracy"] = scores["loss"], scores["accuracy"]
        record["seconds"] = state.seconds + time.perf_counter() - started
        state.history.append(record)
        if self.early_stopping is not None and self.early_stopping.update(record):
            self.keep_best()
        self.schedule.end_epoch(state.epoch, record[self.monitor])
        state.epoch += 1
        state.batch, state.loss_sum, state.correct, state.seconds = 0, 0.0, 0, 0.0
        state.shuffle = generator_state(self.rng)
        return record

    # --- the best weights (early stopping) --------------------------------------------------

    def keep_best(self) -> None:
        if self.best_params is None:
            self.best_params = np.empty_like(self.net.flat_params)
            self.best_state = np.empty_like(self.net.flat_state)
        assert self.best_state is not None  # allocated with best_params
        np.copyto(self.best_params, self.net.flat_params)
        np.copyto(self.best_state, self.net.flat_state)

    def publish(self) -> dict[str, dict[str, np.ndarray]]:
        """Put the best epoch's weights into the network (under early stopping) and return
        the training weights they replace, by key, as bundle slots `current_params` and
        `current_state` ({} when there is no best epoch yet)."""
        if self.best_params is None:
            return {}
        net = self.net
        assert self.best_state is not None  # allocated with best_params
        current = (net.flat_params.copy(), net.flat_state.copy())
        np.copyto(net.flat_params, self.best_params)
        np.copyto(net.flat_state, self.best_state)
        return {
            "current_params": views(current[0], net.param_offsets),
            "current_state": views(current[1], net.state_offsets),
        }

    def unpublish(self, slots: dict[str, dict[str, np.ndarray]]) -> None:
        """Put back the training weights that `publish` replaced."""
        if slots:
            self.net.load_arrays(slots["current_params"], slots["current_state"])

    # --- resuming ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The JSON-safe training state (history apart) for a bundle's meta."""
        state = self.state
        return {
            "epoch": state.epoch,
            "batch": state.batch,
            "shuffle": state.shuffle,
            "random_step": state.random_step,
            "loss_sum": state.loss_sum,
            "correct": state.correct,
            "seconds": state.seconds,
            "schedule": self.schedule.state_dict(),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
        }

    def load_state_dict(
        self, saved: dict[str, Any], history: list[dict], slots: dict[str, dict[str, np.ndarray]]
    ) -> None:
        """Continue from a saved state; the network holds the saved (published) weights and
        `slots` the training weights when they differ (see `publish`)."""
        shuffle = dict(saved["shuffle"])
        self.state = TrainingState(
            epoch=int(saved["epoch"]),
            batch=int(saved["batch"]),
            shuffle=shuffle,
            random_step=int(saved["random_step"]),
            loss_sum=float(saved["loss_sum"]),
            correct=int(saved["correct"]),
            seconds=float(saved["seconds"]),
            history=[dict(record) for record in history],
        )
        set_generator_state(self.rng, shuffle)
        self.schedule.load_state_dict(saved["schedule"])
        if self.early_stopping is not None and saved["early_stopping"] is not None:
            self.early_stopping.load_state_dict(saved["early_stopping"])
        if slots:
            self.keep_best()
            self.unpublish(slots)


def views(flat: np.ndarray, offsets: dict[str, tuple[int, tuple]]) -> dict[str, np.ndarray]:
    return {
        key: flat[offset : offset + math.prod(shape)].reshape(shape)
        for key, (offset, shape) in offsets.items()
    }


def generator_state(rng: np.random.Generator) -> dict:
    """A numpy generator's state as JSON-safe data (its 128-bit integers as text)."""
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": str(state["state"]["state"]),
        "inc": str(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def set_generator_state(rng: np.random.Generator, saved: dict) -> None:
    rng.bit_generator.state = {
        "bit_generator": saved["bit_generator"],
        "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
        "has_uint32": int(saved["has_uint32"]),
        "uinteger": int(saved["uinteger"]),
    }


def fit(
    net: Any,
    optimizer: Any,
    train: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    preprocessing: dict,
    seed: int = 0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    schedule: Any = None,
    early_stopping: EarlyStopping | None = None,
    monitor: str | None = None,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> list[dict]:
    """Train `net` with `optimizer`; return one record per epoch:
    {epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds} (val_* None without
    validation). `schedule` (cnntool.training.schedules) sets the learning rate; with
    `early_stopping`, training may end early and the network ends with the best epoch's
    weights; `monitor` is the metric they watch (default: early stopping's, else val_loss).

    Mini-batches are drawn from a permutation made by a generator seeded with `seed`, which
    also seeds dropout, so the same seed (and thread count) gives the same weights.
    """
    trainer = Trainer(
        net, optimizer, train, batch_size=batch_size, preprocessing=preprocessing, seed=seed,
        validation=validation, schedule=schedule, early_stopping=early_stopping, monitor=monitor,
    )  # fmt: skip
    trainer.run(epochs, on_epoch=on_epoch, on_batch=on_batch)
    trainer.publish()
    return trainer.state.history
