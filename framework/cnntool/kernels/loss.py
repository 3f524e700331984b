"""Softmax cross-entropy computed from logits."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def softmax_cross_entropy(logits, labels, weights, grad, grad_scale):
    """Sum over rows of w[label] * -log softmax(logits)[label]; grad = (softmax(logits) -
    onehot(label)) * w[label] * grad_scale (1/N for the mean over a batch of N), with w the
    weight of each class (ones, unless training weighs classes).

    Uses log-sum-exp around the row maximum, so no logit overflows. Returns
    (summed loss, number of rows whose largest logit is the label).
    """
    n_rows, n_classes = logits.shape
    scale = np.float32(grad_scale)
    total = 0.0
    correct = 0
    for n in range(n_rows):
        top = logits[n, 0]
        best = 0
        for k in range(1, n_classes):
            if logits[n, k] > top:
                top = logits[n, k]
                best = k
        label = labels[n]
        weighted = scale * weights[label]
        if best == label:
            correct += 1
        sum_exp = np.float32(0.0)
        for k in range(n_classes):
            e = np.exp(logits[n, k] - top)
            grad[n, k] = e
            sum_exp += e
        total += weights[label] * (np.log(sum_exp) - (logits[n, label] - top))
        inv = weighted / sum_exp
        for k in range(n_classes):
            grad[n, k] *= inv
        grad[n, label] -= weighted
    return total, correct


@njit(cache=True, fastmath=True, nogil=True)
def argmax_rows(logits, out):
    """out[n] = index of the largest logit of row n (the first one on ties)."""
    for n in range(logits.shape[0]):
        best = 0
        top = logits[n, 0]
        for k in range(1, logits.shape[1]):
            if logits[n, k] > top:
                top = logits[n, k]
                best = k
        out[n] = best
