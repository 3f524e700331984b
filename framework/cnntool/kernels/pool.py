"""Max pooling over (PH, PW) windows with stride (SH, SW), no padding.

The forward pass keeps only the maxima. The backward pass finds again, in each window of
the input, the first element (row-major) equal to the window's maximum and routes the
gradient there, which is exactly the element the maximum came from.
"""

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
    grad_x[:] = 0.0
    for n in range(n_images):
        for c in range(channels):
            plane = x[n, c]
            target = grad_x[n, c]
            best = out[n, c]
            grad = grad_out[n, c]
            if ph == 2 and pw == 2 and sh == 2 and sw == 2:
                for p in range(oh):
                    h = 2 * p
                    for q in range(ow):
                        w = 2 * q
                        m = best[p, q]
                        if plane[h, w] == m:
                            target[h, w] = grad[p, q]
                        elif plane[h, w + 1] == m:
                            target[h, w + 1] = grad[p, q]
                        elif plane[h + 1, w] == m:
                            target[h + 1, w] = grad[p, q]
                        else:
                            target[h + 1, w + 1] = grad[p, q]
                continue
            for p in range(oh):
                for q in range(ow):
                    route(plane, target, p * sh, q * sw, ph, pw, best[p, q], grad[p, q])


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def route(plane, target, h0, w0, ph, pw, maximum, grad):
    """Add grad to the first element of the window at (h0, w0) equal to its maximum."""
    for i in range(ph):
        for j in range(pw):
            if plane[h0 + i, w0 + j] == maximum:
                target[h0 + i, w0 + j] += grad
                return
