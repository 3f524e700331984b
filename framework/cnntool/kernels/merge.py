"""Merging branches of a graph: elementwise sums and joins along the channel axis."""

from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def add_forward(a, b, out):
    """out = a + b (arrays of one shape)."""
    x = a.reshape(a.size)
    y = b.reshape(b.size)
    dst = out.reshape(out.size)
    for i in range(dst.size):
        dst[i] = x[i] + y[i]


@njit(cache=True, fastmath=True, nogil=True)
def add_into(out, a):
    """out += a (arrays of one shape)."""
    x = a.reshape(a.size)
    dst = out.reshape(out.size)
    for i in range(dst.size):
        dst[i] += x[i]


@njit(cache=True, nogil=True)
def concat_forward(x, start, out):
    """out[:, start:start + C] = x, for x (N, C, H, W) and out (N, C_total, H, W)."""
    n, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    src = x.reshape((n, channels * plane))
    dst = out.reshape((n, out.shape[1] * plane))
    first = start * plane
    for e in range(n):
        dst[e, first : first + channels * plane] = src[e]


@njit(cache=True, nogil=True)
def concat_backward(grad_out, start, grad_x):
    """grad_x = grad_out[:, start:start + C]: each input's share of the gradient."""
    n, channels = grad_x.shape[0], grad_x.shape[1]
    plane = grad_x.shape[2] * grad_x.shape[3]
    src = grad_out.reshape((n, grad_out.shape[1] * plane))
    dst = grad_x.reshape((n, channels * plane))
    first = start * plane
    for e in range(n):
        dst[e] = src[e, first : first + channels * plane]
