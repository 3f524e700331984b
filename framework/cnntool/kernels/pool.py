"""Max pooling over (PH, PW) windows with stride (SH, SW), no padding.

`argmax` keeps, per output element, the flat index h*W + w of the winning input in its
(n, c) plane, so the backward pass routes each gradient to exactly one input.
"""

from numba import njit


@njit(cache=True, fastmath=True)
def maxpool2d_forward(x, ph, pw, sh, sw, out, argmax):
    """out[n, c, p, q] = max over the window of x[n, c, p*SH : p*SH+PH, q*SW : q*SW+PW]."""
    n_images, channels, oh, ow = out.shape
    width = x.shape[3]
    for n in range(n_images):
        for c in range(channels):
            for p in range(oh):
                for q in range(ow):
                    h0 = p * sh
                    w0 = q * sw
                    best = x[n, c, h0, w0]
                    where = h0 * width + w0
                    for i in range(ph):
                        for j in range(pw):
                            v = x[n, c, h0 + i, w0 + j]
                            if v > best:
                                best = v
                                where = (h0 + i) * width + w0 + j
                    out[n, c, p, q] = best
                    argmax[n, c, p, q] = where


@njit(cache=True, fastmath=True)
def maxpool2d_backward(grad_out, argmax, grad_x):
    """grad_x[n, c, h, w] = sum of grad_out over the windows whose maximum was x[n, c, h, w]."""
    n_images, channels, oh, ow = grad_out.shape
    width = grad_x.shape[3]
    grad_x[:] = 0.0
    for n in range(n_images):
        for c in range(channels):
            for p in range(oh):
                for q in range(ow):
                    where = argmax[n, c, p, q]
                    grad_x[n, c, where // width, where % width] += grad_out[n, c, p, q]
