"""Saturating elementwise activations: the logistic sigmoid and the hyperbolic tangent.
Both backward passes use the saved output, whose derivative is a function of it."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), computed through exp(-|x|) so no exponential overflows."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    one = np.float32(1.0)
    for i in range(src.size):
        v = src[i]
        if v >= 0:
            dst[i] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            dst[i] = e / (one + e)


@njit(cache=True, fastmath=True, nogil=True)
def sigmoid_backward(grad_out, out, grad_x):
    """dx = grad_out * y * (1 - y)."""
    g = grad_out.reshape(grad_out.size)
    y = out.reshape(out.size)
    dst = grad_x.reshape(grad_x.size)
    one = np.float32(1.0)
    for i in range(g.size):
        dst[i] = g[i] * y[i] * (one - y[i])


@njit(cache=True, fastmath=True, nogil=True)
def tanh_forward(x, out):
    """out = tanh(x)."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    for i in range(src.size):
        dst[i] = np.tanh(src[i])


@njit(cache=True, fastmath=True, nogil=True)
def tanh_backward(grad_out, out, grad_x):
    """dx = grad_out * (1 - y²)."""
    g = grad_out.reshape(grad_out.size)
    y = out.reshape(out.size)
    dst = grad_x.reshape(grad_x.size)
    one = np.float32(1.0)
    for i in range(g.size):
        dst[i] = g[i] * (one - y[i] * y[i])
