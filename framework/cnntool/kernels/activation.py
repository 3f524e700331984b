"""Elementwise activations and the softmax over the last axis."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def relu_forward(x, out):
    """out = max(x, 0)."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    zero = np.float32(0.0)
    for i in range(src.size):
        v = src[i]
        dst[i] = v if v > zero else zero


@njit(cache=True, fastmath=True, nogil=True)
def relu_backward(grad_out, out, grad_x):
    """dx = grad_out where the output was positive, else 0."""
    g = grad_out.reshape(grad_out.size)
    y = out.reshape(out.size)
    dst = grad_x.reshape(grad_x.size)
    zero = np.float32(0.0)
    for i in range(g.size):
        dst[i] = g[i] if y[i] > zero else zero


@njit(cache=True, fastmath=True, nogil=True)
def softmax_forward(x, out):
    """out[n] = exp(x[n] - max x[n]) / sum exp(x[n] - max x[n]) (stable for any logits)."""
    for n in range(x.shape[0]):
        top = x[n, 0]
        for k in range(1, x.shape[1]):
            top = max(top, x[n, k])
        total = np.float32(0.0)
        for k in range(x.shape[1]):
            e = np.exp(x[n, k] - top)
            out[n, k] = e
            total += e
        inv = np.float32(1.0) / total
        for k in range(x.shape[1]):
            out[n, k] *= inv


@njit(cache=True, fastmath=True, nogil=True)
def softmax_backward(grad_out, out, grad_x):
    """dx = y * (g - sum_k g_k y_k), the softmax Jacobian applied to g."""
    for n in range(out.shape[0]):
        dot = np.float32(0.0)
        for k in range(out.shape[1]):
            dot += grad_out[n, k] * out[n, k]
        for k in range(out.shape[1]):
            grad_x[n, k] = out[n, k] * (grad_out[n, k] - dot)
