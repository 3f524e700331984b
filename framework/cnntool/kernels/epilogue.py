"""A convolution that applies an activation's epilogue (cnntool.layers.epilogue)
image by image, while the image's output is still in cache.

`value` and `derivative` are scalar functions. numba would compile a call through a
function passed as an argument as an indirect call (and not cache it); the plan instead
binds them by name (cnntool.compile.codegen.specialize), so they are inlined.
"""

import numpy as np
from numba import njit

from cnntool.kernels.conv import crop, wide_product

# The element loops stay in the kernels themselves: a helper handed `value` would receive
# it as an argument, which is what the binding by name avoids.


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_wide_epilogue(
    x, weight, bias, use_bias, keep, sh, sw, pad_top, pad_left, padded, columns, full, value, derivative,
    a, b, pre, out,
):  # fmt: skip
    """pre[n] = the convolution of x[n] (conv2d_forward_wide), out[n] = value(pre[n], a, b)
    elementwise, one image at a time. `derivative` is unused here (backward takes it)."""
    for n in range(out.shape[0]):
        cols = columns[n] if keep else columns[0]
        wp = wide_product(x[n], weight, sh, sw, pad_top, pad_left, padded, cols, full)
        crop(full, wp, bias, use_bias, False, pre[n])
        source = pre[n].reshape(pre[n].size)
        target = out[n].reshape(out[n].size)
        for i in range(source.size):
            target[i] = value(source[i], a, b)


@njit(cache=True, fastmath=True, nogil=True)
def epilogue_backward(grad_out, pre, value, derivative, a, b, grad_pre):
    """grad_pre = grad_out * derivative(pre, a, b): the gradient before the activation."""
    g = grad_out.reshape(grad_out.size)
    x = pre.reshape(pre.size)
    target = grad_pre.reshape(grad_pre.size)
    for i in range(g.size):
        target[i] = g[i] * derivative(x[i], a, b)


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_epilogue_pool_wide(
    x, weight, bias, use_bias, sh, sw, pad_top, pad_left, padded, columns, full, value, derivative, a, b, out
):  # fmt: skip
    """Inference of a conv2d, an increasing activation and a 2x2 max-pool of stride
    2: out[n, o, p, q] = value(bias[o] + max of the product over the window, a, b), which
    equals pooling the activated output because value never decreases."""
    for n in range(out.shape[0]):
        wp = wide_product(x[n], weight, sh, sw, pad_top, pad_left, padded, columns[0], full)
        image = out[n]
        for o in range(image.shape[0]):
            shift = bias[o] if use_bias else np.float32(0.0)
            for p in range(image.shape[1]):
                top = full[o, 2 * p * wp : 2 * p * wp + 2 * image.shape[2]]
                bottom = full[o, (2 * p + 1) * wp : (2 * p + 1) * wp + 2 * image.shape[2]]
                target = image[o, p]
                for q in range(image.shape[2]):
                    best = max(max(top[2 * q], top[2 * q + 1]), max(bottom[2 * q], bottom[2 * q + 1]))
                    target[q] = value(best + shift, a, b)
