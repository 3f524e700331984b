"""Scoring a network on labelled examples: the mean loss, the accuracy and every prediction,
in batches gathered into reused buffers with the bundle's preprocessing (`BatchSource`, which
training shares). `cnntool eval`, validation during training and `cnntool.evaluate` use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.data import input_scale
from cnntool.errors import DataError
from cnntool.kernels.batch import gather_batch


class BatchSource:
    """Gathers batches of a dataset, in a given order, into reused float32 buffers."""

    def __init__(self, x: np.ndarray, y: np.ndarray, preprocessing: dict) -> None:
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
        buffers = self._buffers.get(size)
        if buffers is None:
            buffers = (np.empty((size, *self.x.shape[1:]), np.float32), np.empty(size, np.int64))
            self._buffers[size] = buffers
        xb, yb = buffers
        gather_batch(self.x, self.y, order, start, self.scale, self.mean, self.inv_std, xb, yb)
        return xb, yb


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
