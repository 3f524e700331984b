"""Max pooling over (PH, PW) windows with stride (SH, SW), no padding.

The forward pass keeps, beside each maximum, which element of its window won: `code` is
i*PW + j for the first maximum in row-major order. The backward pass routes each gradient
there. Both are written without data-dependent branches (comparisons become 0/1 numbers),
so their speed does not depend on the data.
"""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def maxpool2d_forward(x, ph, pw, sh, sw, out, code):
    """out[n, c, p, q] = max of x[n, c, p*SH : p*SH+PH, q*SW : q*SW+PW]; code = its place."""
    n_images, channels, oh, ow = out.shape
    for n in range(n_images):
        for c in range(channels):
            plane = x[n, c]
            if ph == 2 and pw == 2 and sh == 2 and sw == 2:
                for p in range(oh):
                    top = plane[2 * p]
                    bottom = plane[2 * p + 1]
                    best = out[n, c, p]
                    where = code[n, c, p]
                    for q in range(ow):
                        a, b = top[2 * q], top[2 * q + 1]
                        d, e = bottom[2 * q], bottom[2 * q + 1]
                        upper, lower = max(a, b), max(d, e)
                        upper_code = np.int32(b > a)
                        lower_code = np.int32(2) + np.int32(e > d)
                        below = np.int32(lower > upper)
                        best[q] = max(upper, lower)
                        where[q] = upper_code + (lower_code - upper_code) * below
                continue
            for p in range(oh):
                for q in range(ow):
                    top = plane[p * sh, q * sw]
                    index = np.int32(0)
                    for i in range(ph):
                        for j in range(pw):
                            v = plane[p * sh + i, q * sw + j]
                            better = np.int32(v > top)
                            top = max(top, v)
                            index += (np.int32(i * pw + j) - index) * better
                    out[n, c, p, q] = top
                    code[n, c, p, q] = index


@njit(cache=True, fastmath=True, nogil=True)
def maxpool2d_backward(grad_out, code, ph, pw, sh, sw, grad_x):
    """grad_x[n, c, h, w] = sum of grad_out over the windows whose maximum was x[n, c, h, w]."""
    n_images, channels, oh, ow = grad_out.shape
    if ph == 2 and pw == 2 and sh == 2 and sw == 2:
        for n in range(n_images):
            for c in range(channels):
                route_2x2(grad_out[n, c], code[n, c], grad_x[n, c])
        return
    grad_x[:] = 0.0
    for n in range(n_images):
        for c in range(channels):
            target = grad_x[n, c]
            for p in range(oh):
                for q in range(ow):
                    index = code[n, c, p, q]
                    target[p * sh + index // pw, q * sw + index % pw] += grad_out[n, c, p, q]


@njit(cache=True, fastmath=True, nogil=True)
def route_2x2(grad, code, target):
    """Non-overlapping 2x2 windows, one input row at a time: element w of a row gets its
    window's gradient when the window's code names it, else 0; rows and columns no window
    covers (odd sizes) get 0. Stores are contiguous and branch-free, so they vectorise."""
    oh, ow = grad.shape
    zero = np.float32(0.0)
    for p in range(oh):
        g = grad[p]
        k = code[p]
        top = target[2 * p]
        bottom = target[2 * p + 1]
        for w in range(2 * ow):
            q = w >> 1
            place = k[q] - (w & 1)
            top[w] = g[q] * np.float32(place == 0)
            bottom[w] = g[q] * np.float32(place == 2)
        for w in range(2 * ow, target.shape[1]):
            top[w] = zero
            bottom[w] = zero
    for h in range(2 * oh, target.shape[0]):
        target[h] = zero
