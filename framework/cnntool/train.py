"""The training loop: shuffled mini-batches, forward, loss, backward, update, per epoch.

Batches are gathered from the (uint8 or float) dataset into one preallocated float32
buffer, with the recorded preprocessing applied on the way, so an epoch never copies the
whole set and a step allocates nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cnntool.errors import CnntoolError, DataError

EpochCallback = Callable[[dict], None]
BatchCallback = Callable[[int, int], None]


class TrainingDiverged(CnntoolError):
    """The loss became NaN or infinite."""


class BatchSource:
    """Gathers batches of a dataset, in a given order, into reused float32 buffers."""

    def __init__(self, x: np.ndarray, y: np.ndarray, preprocessing: dict) -> None:
        from cnntool.data import input_scale

        if x.shape[0] != y.shape[0]:
            raise DataError(f"{x.shape[0]} images but {y.shape[0]} labels")
        self.x = np.ascontiguousarray(x)
        self.y = np.ascontiguousarray(y, np.int64)
        self.scale = input_scale(self.x, preprocessing)
        self.mean = float(preprocessing.get("mean", 0.0))
        self.inv_std = 1.0 / float(preprocessing.get("std", 1.0))
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, order: np.ndarray, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        from cnntool.kernels.batch import gather_batch

        buffers = self._buffers.get(size)
        if buffers is None:
            buffers = (np.empty((size, *self.x.shape[1:]), np.float32), np.empty(size, np.int64))
            self._buffers[size] = buffers
        xb, yb = buffers
        gather_batch(self.x, self.y, order, start, self.scale, self.mean, self.inv_std, xb, yb)
        return xb, yb


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
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> list[dict]:
    """Train `net` with `optimizer`; return one record per epoch:
    {epoch, loss, accuracy, val_loss, val_accuracy, seconds} (val_* None without validation).

    Mini-batches are drawn from a permutation made by a generator seeded with `seed`, so the
    same seed (and thread count) gives the same weights.
    """
    source = BatchSource(*train, preprocessing)
    n = len(source)
    if n == 0:
        raise DataError("the training set is empty")
    check_labels(source.y, net.output_shape[0], "training")
    val_source = (
        BatchSource(*validation, preprocessing) if validation is not None and len(validation[0]) else None
    )
    rng = np.random.default_rng(seed)
    history = []
    n_batches = math.ceil(n / batch_size)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(n)
        total_loss = 0.0
        total_correct = 0
        for index, start in enumerate(range(0, n, batch_size)):
            xb, yb = source.batch(order, start, min(batch_size, n - start))
            loss, correct = net.train_step(xb, yb)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss} at epoch {epoch}, batch {index + 1}; "
                    "lower the learning rate (--lr)"
                )
            optimizer.step()
            total_loss += loss
            total_correct += correct
            if on_batch is not None:
                on_batch(index + 1, n_batches)
        record = {
            "epoch": epoch,
            "loss": total_loss / n,
            "accuracy": total_correct / n,
            "val_loss": None,
            "val_accuracy": None,
        }
        if val_source is not None:
            scores = score(net, val_source)
            record["val_loss"], record["val_accuracy"] = scores["loss"], scores["accuracy"]
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history


def evaluate(
    net: Any, x: np.ndarray, y: np.ndarray, preprocessing: dict, *, batch_size: int = 256
) -> dict[str, Any]:
    """Mean loss, accuracy and the predicted class of every example."""
    source = BatchSource(x, y, preprocessing)
    check_labels(source.y, net.output_shape[0], "evaluation")
    return score(net, source, batch_size=batch_size)


def score(net: Any, source: BatchSource, *, batch_size: int = 256) -> dict[str, Any]:
    n = len(source)
    order = np.arange(n)
    predictions = np.empty(n, np.int64)
    total_loss = 0.0
    total_correct = 0
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        xb, yb = source.batch(order, start, size)
        loss, correct = net.evaluate_batch(xb, yb, predictions[start : start + size])
        total_loss += loss
        total_correct += correct
    return {
        "loss": total_loss / n if n else float("nan"),
        "accuracy": total_correct / n if n else float("nan"),
        "predictions": predictions,
    }


def check_labels(labels: np.ndarray, classes: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{what} labels run from {labels.min()} to {labels.max()} but the network has "
            f"{classes} outputs; expected labels in [0, {classes})"
        )
