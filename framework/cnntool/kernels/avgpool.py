"""Average pooling: over (PH, PW) windows with stride (SH, SW), and over whole feature maps."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def avgpool2d_forward(x, ph, pw, sh, sw, out):
    """out[n, c, p, q] = mean of x[n, c, p*SH : p*SH+PH, q*SW : q*SW+PW]."""
    n_images, channels, oh, ow = out.shape
    inv = np.float32(1.0 / (ph * pw))
    for n in range(n_images):
        for c in range(channels):
            plane = x[n, c]
            target = out[n, c]
            for p in range(oh):
                for q in range(ow):
                    total = np.float32(0.0)
                    for i in range(ph):
                        for j in range(pw):
                            total += plane[p * sh + i, q * sw + j]
                    target[p, q] = total * inv


@njit(cache=True, fastmath=True, nogil=True)
def avgpool2d_backward(grad_out, ph, pw, sh, sw, grad_x):
    """grad_x[n, c, h, w] = sum over the windows containing (h, w) of grad_out / (PH * PW)."""
    n_images, channels, oh, ow = grad_out.shape
    inv = np.float32(1.0 / (ph * pw))
    grad_x[:] = 0.0
    for n in range(n_images):
        for c in range(channels):
            grad = grad_out[n, c]
            target = grad_x[n, c]
            for p in range(oh):
                for q in range(ow):
                    share = grad[p, q] * inv
                    for i in range(ph):
                        for j in range(pw):
                            target[p * sh + i, q * sw + j] += share


@njit(cache=True, fastmath=True, nogil=True)
def global_avgpool2d_forward(x, out):
    """out[n, c] = mean of x[n, c] over its height and width."""
    n_images, channels, height, width = x.shape
    inv = np.float32(1.0 / (height * width))
    for n in range(n_images):
        for c in range(channels):
            total = np.float32(0.0)
            for h in range(height):
                for w in range(width):
                    total += x[n, c, h, w]
            out[n, c] = total * inv


@njit(cache=True, fastmath=True, nogil=True)
def global_avgpool2d_backward(grad_out, grad_x):
    """grad_x[n, c, h, w] = grad_out[n, c] / (H * W)."""
    n_images, channels, height, width = grad_x.shape
    inv = np.float32(1.0 / (height * width))
    for n in range(n_images):
        for c in range(channels):
            share = grad_out[n, c] * inv
            for h in range(height):
                for w in range(width):
                    grad_x[n, c, h, w] = share
