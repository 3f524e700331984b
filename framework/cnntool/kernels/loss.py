"""Softmax cross-entropy computed from logits."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def softmax_cross_entropy(logits, labels, grad):
    """Mean of -log softmax(logits)[label]; grad = (softmax(logits) - onehot(label)) / N.

    Uses log-sum-exp around the row maximum, so no logit overflows. Returns
    (mean loss, number of rows whose largest logit is the label).
    """
    n_rows, n_classes = logits.shape
    inv_n = np.float32(1.0) / np.float32(n_rows)
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
        if best == label:
            correct += 1
        sum_exp = np.float32(0.0)
        for k in range(n_classes):
            e = np.exp(logits[n, k] - top)
            grad[n, k] = e
            sum_exp += e
        log_sum = np.log(sum_exp)
        total += log_sum - (logits[n, label] - top)
        scale = inv_n / sum_exp
        for k in range(n_classes):
            grad[n, k] *= scale
        grad[n, label] -= inv_n
    return total / n_rows, correct
