"""Max pooling over (PH, PW) windows with stride (SH, SW), no padding.

The forward pass keeps only the maxima. The backward pass finds again, in each window of
the input, the first element (row-major) equal to the window's maximum and routes the
gradient there, which is exactly the element the maximum came from.
"""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def maxpool2d_forward(x, ph, pw, sh, sw, out):
    """out[n, c, p, q] = max over the window of x[n, c, p*SH : p*SH+PH, q*SW : q*SW+PW]."""
    n_images, channels, oh, ow = out.shape
    for n in range(n_images):
        for c in range(channels):
            plane = x[n, c]
            target = out[n, c]
            if ph == 2 and pw == 2 and sh == 2 and sw == 2:
                for p in range(oh):
                    top = plane[2 * p]
                    bottom = plane[2 * p + 1]
                    for q in range(ow):
                        target[p, q] = max(
                            max(top[2 * q], top[2 * q + 1]), max(bottom[2 * q], bottom[2 * q + 1])
                        )
                continue
            for p in range(oh):
                for q in range(ow):
                    best = plane[p * sh, q * sw]
                    for i in range(ph):
                        for j in range(pw):
                            best = max(best, plane[p * sh + i, q * sw + j])
                    target[p, q] = best


@njit(cache=True, fastmath=True, nogil=True)
def maxpool2d_backward(grad_out, x, out, ph, pw, sh, sw, grad_x):
    """grad_x[n, c, h, w] = sum of grad_out over the windows whose maximum was x[n, c, h, w]."""
    n_images, channels, oh, ow = grad_out.shape
    if ph == 2 and pw == 2 and sh == 2 and sw == 2:
        for n in range(n_images):
            for c in range(channels):
                route_2x2(x[n, c], out[n, c], grad_out[n, c], grad_x[n, c])
        return
    grad_x[:] = 0.0
    for n in range(n_images):
        for c in range(channels):
            plane = x[n, c]
            target = grad_x[n, c]
            best = out[n, c]
            grad = grad_out[n, c]
            for p in range(oh):
                for q in range(ow):
                    route(plane, target, p * sh, q * sw, ph, pw, best[p, q], grad[p, q])


@njit(cache=True, fastmath=True, nogil=True)
def route_2x2(plane, best, grad, target):
    """Non-overlapping 2x2 windows: each of the four inputs gets the window's gradient if it is
    the first equal to the maximum, else 0, written without branches; rows and columns no
    window covers (odd sizes) get 0."""
    oh, ow = best.shape
    zero = np.float32(0.0)
    for p in range(oh):
        top = plane[2 * p]
        bottom = plane[2 * p + 1]
        out_top = target[2 * p]
        out_bottom = target[2 * p + 1]
        maxima = best[p]
        grads = grad[p]
        for q in range(ow):
            m = maxima[q]
            g = grads[q]
            first = top[2 * q] == m
            second = (top[2 * q + 1] == m) and not first
            third = (bottom[2 * q] == m) and not (first or second)
            fourth = not (first or second or third)
            out_top[2 * q] = g if first else zero
            out_top[2 * q + 1] = g if second else zero
            out_bottom[2 * q] = g if third else zero
            out_bottom[2 * q + 1] = g if fourth else zero
        for w in range(2 * ow, target.shape[1]):
            out_top[w] = zero
            out_bottom[w] = zero
    for h in range(2 * oh, target.shape[0]):
        target[h] = zero


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def route(plane, target, h0, w0, ph, pw, maximum, grad):
    """Add grad to the first element of the window at (h0, w0) equal to its maximum."""
    for i in range(ph):
        for j in range(pw):
            if plane[h0 + i, w0 + j] == maximum:
                target[h0 + i, w0 + j] += grad
                return
