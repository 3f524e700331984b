"""Fully connected layer: x (N, F_in), weight (F_out, F_in), out (N, F_out)."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def dense_forward(x, weight, bias, use_bias, out):
    """out = x @ weight.T + bias."""
    np.dot(x, weight.T, out)
    if use_bias:
        for n in range(out.shape[0]):
            for k in range(out.shape[1]):
                out[n, k] += bias[k]


@njit(cache=True, fastmath=True)
def dense_backward(grad_out, x, weight, use_bias, need_grad_x, grad_weight, grad_bias, grad_x):
    """dW = grad_out.T @ x, db = grad_out summed over the batch, dx = grad_out @ weight."""
    np.dot(grad_out.T, x, grad_weight)
    if use_bias:
        for k in range(grad_out.shape[1]):
            total = np.float32(0.0)
            for n in range(grad_out.shape[0]):
                total += grad_out[n, k]
            grad_bias[k] = total
    if need_grad_x:
        np.dot(grad_out, weight, grad_x)
