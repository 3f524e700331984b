"""A stride-1 convolution that applies an activation's epilogue (cnntool.layers.epilogue)
image by image, while the image's output is still in cache.

`value` and `derivative` are scalar functions. numba would compile a call through a
function passed as an argument as an indirect call (and not cache it); the plan instead
binds them by name (cnntool.plan.specialize), so they are inlined.
"""

from numba import njit

from cnntool.kernels.conv import crop, wide_product


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_wide_epilogue(
    x, weight, bias, use_bias, keep, pad_top, pad_left, padded, columns, full, value, derivative, a, b,
    pre, out,
):  # fmt: skip
    """pre[n] = the stride-1 convolution of x[n] (conv2d_forward_wide), out[n] = value(pre[n], a, b)
    elementwise, one image at a time. `derivative` is unused here (backward takes it)."""
    for n in range(out.shape[0]):
        cols = columns[n] if keep else columns[0]
        wp = wide_product(x[n], weight, pad_top, pad_left, padded, cols, full)
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
