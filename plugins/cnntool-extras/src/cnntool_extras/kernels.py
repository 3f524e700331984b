"""numba kernels of the extras layers: pure functions on float32 arrays.

Each kernel writes its result into arrays the caller passes in (the layer's reused
buffers) and returns nothing. Inputs must be C-contiguous; the layers make sure of it.
"""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def leaky_relu_forward(x, negative_slope, out):
    """out = x where x > 0, else negative_slope * x."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    for i in range(src.size):
        v = src[i]
        dst[i] = v if v > 0 else negative_slope * v


@njit(cache=True, fastmath=True, nogil=True)
def leaky_relu_backward(grad_out, x, negative_slope, grad_x):
    """dx = grad_out where x > 0, else negative_slope * grad_out."""
    g = grad_out.reshape(grad_out.size)
    src = x.reshape(x.size)
    dst = grad_x.reshape(grad_x.size)
    for i in range(g.size):
        dst[i] = g[i] if src[i] > 0 else negative_slope * g[i]


# The same activation for one element, for a convolution before it to apply (the layer's
# Epilogue): the compiled plan calls these from the convolution's kernel, image by image.
@njit(cache=True, fastmath=True, nogil=True)
def leaky_relu_value(x, negative_slope, unused):
    """y = x where x > 0, else negative_slope * x."""
    return x if x > 0 else negative_slope * x


@njit(cache=True, fastmath=True, nogil=True)
def leaky_relu_derivative(x, negative_slope, unused):
    """dy/dx = 1 where x > 0, else negative_slope."""
    return np.float32(1.0) if x > 0 else negative_slope


@njit(cache=True, fastmath=True, nogil=True)
def prelu_forward(x, weight, spatial, out):
    """out[n, c, s] = x where x > 0, else weight[c] * x, with x and out seen as (N, C, S),
    S = `spatial` elements per channel; weight is (C,) or (1,) (one slope for every channel)."""
    source = x.reshape((x.shape[0], x.shape[1], spatial))
    target = out.reshape((x.shape[0], x.shape[1], spatial))
    shared = weight.shape[0] == 1
    for n in range(source.shape[0]):
        for c in range(source.shape[1]):
            slope = weight[0] if shared else weight[c]
            row = source[n, c]
            result = target[n, c]
            for s in range(spatial):
                v = row[s]
                result[s] = v if v > 0 else slope * v


@njit(cache=True, fastmath=True, nogil=True)
def prelu_backward(grad_out, x, weight, spatial, need_input_grad, grad_weight, grad_x):
    """dx = grad_out where x > 0, else weight[c] * grad_out;
    dweight[c] = sum over n, s of grad_out * x where x <= 0 (summed over c too when shared)."""
    source = x.reshape((x.shape[0], x.shape[1], spatial))
    gradient = grad_out.reshape((x.shape[0], x.shape[1], spatial))
    target = grad_x.reshape((x.shape[0], x.shape[1], spatial))
    shared = weight.shape[0] == 1
    sums = np.zeros(weight.shape[0], np.float64)
    for n in range(source.shape[0]):
        for c in range(source.shape[1]):
            k = 0 if shared else c
            slope = weight[k]
            total = 0.0
            row, g_row, result = source[n, c], gradient[n, c], target[n, c]
            for s in range(spatial):
                v = row[s]
                g = g_row[s]
                if v > 0:
                    if need_input_grad:
                        result[s] = g
                else:
                    total += g * v
                    if need_input_grad:
                        result[s] = slope * g
            sums[k] += total
    for k in range(weight.shape[0]):
        grad_weight[k] = sums[k]


@njit(cache=True, fastmath=True, nogil=True)
def depthwise_conv2d_forward(x, weight, bias, use_bias, stride_h, stride_w, pad_top, pad_left, out):
    """out[n, o, i, j] = bias[o] + sum_{u,v} weight[o, 0, u, v] * x[n, o // m, i*sh+u-top, j*sw+v-left]
    with m = out_channels / in_channels and zeros outside the image (PyTorch's Conv2d, groups=C)."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    multiplier = out_channels // channels
    out_h, out_w = out.shape[2], out.shape[3]
    for n in range(batch):
        for o in range(out_channels):
            c = o // multiplier
            start = bias[o] if use_bias else np.float32(0.0)
            for i in range(out_h):
                for j in range(out_w):
                    acc = start
                    for u in range(kernel_h):
                        row = i * stride_h + u - pad_top
                        if row < 0 or row >= height:
                            continue
                        for v in range(kernel_w):
                            col = j * stride_w + v - pad_left
                            if 0 <= col < width:
                                acc += weight[o, 0, u, v] * x[n, c, row, col]
                    out[n, o, i, j] = acc


@njit(cache=True, fastmath=True, nogil=True)
def depthwise_conv2d_backward(
    grad_out,
    x,
    weight,
    use_bias,
    need_input_grad,
    stride_h,
    stride_w,
    pad_top,
    pad_left,
    grad_weight,
    grad_bias,
    grad_x,
):
    """dweight[o, 0, u, v] = sum_{n, i, j} g[n, o, i, j] * x[n, c, i*sh + u - top, j*sw + v - left];
    dbias[o] = sum_{n, i, j} g[n, o, i, j]; dx[n, c, ...] = the same windows scattered back,
    weighted by weight[o, 0, u, v], for every o of channel c."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    multiplier = out_channels // channels
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    grad_weight[:] = 0.0
    if use_bias:
        grad_bias[:] = 0.0
    if need_input_grad:
        grad_x[:] = 0.0
    for n in range(batch):
        for o in range(out_channels):
            c = o // multiplier
            for i in range(out_h):
                for j in range(out_w):
                    g = grad_out[n, o, i, j]
                    if use_bias:
                        grad_bias[o] += g
                    for u in range(kernel_h):
                        row = i * stride_h + u - pad_top
                        if row < 0 or row >= height:
                            continue
                        for v in range(kernel_w):
                            col = j * stride_w + v - pad_left
                            if 0 <= col < width:
                                grad_weight[o, 0, u, v] += g * x[n, c, row, col]
                                if need_input_grad:
                                    grad_x[n, c, row, col] += g * weight[o, 0, u, v]
