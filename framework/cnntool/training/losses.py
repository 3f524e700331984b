"""Loss functions."""

from __future__ import annotations

import numpy as np

from cnntool.errors import InputError
from cnntool.kernels.loss import softmax_cross_entropy as kernel


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray, class_weights: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of `logits` (N, K) against integer `labels` (N,).

    Returns the loss and its gradient with respect to the logits, (softmax - onehot) / N,
    computed with log-sum-exp so that no logit overflows. With `class_weights` (K,), each
    row's loss is multiplied by its label's weight before the mean (Keras's class_weight).
    """

    logits = np.ascontiguousarray(logits, np.float32)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise InputError(
            f"expected logits (N, K) and labels (N,), received {logits.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise InputError(
            f"labels must lie in [0, {logits.shape[1]}), received {labels.min()}..{labels.max()}"
        )
    weights = np.ones(logits.shape[1], np.float32) if class_weights is None else class_weights
    weights = np.ascontiguousarray(weights, np.float32)
    if weights.shape != (logits.shape[1],):
        raise InputError(f"expected one class weight per class ({logits.shape[1]}), received {weights.shape}")
    grad = np.empty_like(logits)
    n = max(len(labels), 1)
    total, _ = kernel(logits, np.ascontiguousarray(labels, np.int64), weights, grad, 1.0 / n)
    return float(total) / n, grad
