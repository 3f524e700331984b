"""Batch normalisation per channel of (N, C, S) data: S = H*W for images, 1 for flat features.

Training normalises with the batch's mean and biased variance and moves the running
estimates towards the batch's mean and unbiased variance, as PyTorch does; inference
normalises with the running estimates. The mean and 1/sqrt(var + eps) that were used are
kept per channel, so the backward pass recomputes x̂ instead of storing it.

In training, the batch may be cut into pieces that run at once (one per thread), and the
statistics are the whole batch's: each piece first computes its share (batchnorm_moments,
batchnorm_grad_sums), cnntool combines the shares of every piece (cnntool.layers.batchnorm),
and then each piece finishes with the batch's totals (batchnorm_normalize, batchnorm_grad_x).
A batch not cut is one piece whose share is already the total.

With `relu`, a ReLU layer after the normalisation is computed by these kernels (the plan
fuses it, see BatchNorm2D.fuses): the forward kernels write max(y, 0) into the ReLU's
output, and the backward ones take the gradient after the ReLU and let it pass only where
that output (`activated`) is positive: one pass over the activations less each way.
"""

import math

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def scale_shift(src, dst, c, scale, shift, relu):
    """dst[:, c] = src[:, c] * scale + shift, in float32 (src, dst: (N, C, S)); with `relu`,
    max(that, 0)."""
    scale32 = np.float32(scale)
    shift32 = np.float32(shift)
    floor = np.float32(0.0) if relu else np.float32(-np.inf)
    for i in range(src.shape[0]):
        for s in range(src.shape[2]):
            dst[i, c, s] = max(src[i, c, s] * scale32 + shift32, floor)


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def passed(g, activated, relu, i, c, s):
    """The gradient g[i, c, s], masked by a fused ReLU's output when `relu`."""
    if relu and not activated[i, c, s] > np.float32(0.0):
        return np.float32(0.0)
    return g[i, c, s]


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_inference(x, weight, bias, running_mean, running_var, eps, mean, inv_std, mode, relu, out):
    """out = weight * (x - running_mean) / sqrt(running_var + eps) + bias per channel (with
    `relu`, max(that, 0))."""
    n = x.shape[0]
    channels = weight.shape[0]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    dst = out.reshape((n, channels, spatial))
    mode[0] = 0.0
    for c in range(channels):
        mu = running_mean[c]
        scale_std = 1.0 / math.sqrt(running_var[c] + eps)
        mean[c] = mu
        inv_std[c] = scale_std
        scale_shift(src, dst, c, weight[c] * scale_std, bias[c] - mu * weight[c] * scale_std, relu)


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_moments(x, moments):
    """This piece's share of the batch statistics, per channel c: moments[0, c] the count of
    values, moments[1, c] their mean, moments[2, c] the sum of squared deviations from it."""
    n = x.shape[0]
    channels = moments.shape[1]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    count = n * spatial
    for c in range(channels):
        total = 0.0
        for i in range(n):
            for s in range(spatial):
                total += src[i, c, s]
        mu = total / max(count, 1)
        squares = 0.0
        for i in range(n):
            for s in range(spatial):
                d = src[i, c, s] - mu
                squares += d * d
        moments[0, c] = count
        moments[1, c] = mu
        moments[2, c] = squares


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_normalize(
    x, weight, bias, running_mean, running_var, momentum, eps, moments, offset, mean, inv_std, mode, relu, out
):
    """out = weight * (x - mean) / sqrt(var + eps) + bias with the batch's moments (count,
    mean, squared deviations: batchnorm_moments, combined over the pieces); with `relu`,
    max(that, 0). The piece at offset 0 alone moves the running estimates, once per batch."""
    n = x.shape[0]
    channels = weight.shape[0]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    dst = out.reshape((n, channels, spatial))
    mode[0] = 1.0
    for c in range(channels):
        count = moments[0, c]
        mu = np.float64(moments[1, c])
        squares = np.float64(moments[2, c])
        if offset == 0:
            running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
            if count > 1:
                running_var[c] = (1.0 - momentum) * running_var[c] + momentum * squares / (count - 1)
        scale_std = 1.0 / math.sqrt(squares / max(count, 1.0) + eps)
        mean[c] = mu
        inv_std[c] = scale_std
        scale_shift(src, dst, c, weight[c] * scale_std, bias[c] - mu * weight[c] * scale_std, relu)


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_grad_sums(grad_out, x, mean, inv_std, relu, activated, grad_weight, grad_bias, sums):
    """This piece's share of dbias = Σg and dweight = Σ g x̂ per channel, into the gradients
    (the pieces' gradients are added up after the step) and into sums[1] and sums[2], with
    the count of values in sums[0]. With `relu`, g is grad_out masked by `activated`."""
    n = x.shape[0]
    channels = mean.shape[0]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    g = grad_out.reshape((n, channels, spatial))
    active = activated.reshape((activated.shape[0], channels, spatial))
    for c in range(channels):
        mu = mean[c]
        istd = inv_std[c]
        sum_g = 0.0
        sum_gx = 0.0
        for i in range(n):
            for s in range(spatial):
                v = passed(g, active, relu, i, c, s)
                sum_g += v
                sum_gx += v * (src[i, c, s] - mu) * istd
        grad_bias[c] = sum_g
        grad_weight[c] = sum_gx
        sums[0, c] = n * spatial
        sums[1, c] = sum_g
        sums[2, c] = sum_gx


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_grad_x(grad_out, x, weight, mean, inv_std, mode, sums, relu, activated, grad_x):
    """dx = weight * inv_std * (g - Σg/m - x̂ Σ(g x̂)/m) after a training forward, with the
    batch's sums (batchnorm_grad_sums, combined over the pieces; m values per channel);
    dx = weight * inv_std * g after an inference forward. With `relu`, g is grad_out masked
    by `activated`."""
    n = x.shape[0]
    channels = weight.shape[0]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    g = grad_out.reshape((n, channels, spatial))
    active = activated.reshape((activated.shape[0], channels, spatial))
    dst = grad_x.reshape((n, channels, spatial))
    coupled = mode[0] != 0.0
    for c in range(channels):
        istd = inv_std[c]
        count = max(np.float64(sums[0, c]), 1.0)
        k = np.float32(weight[c] * istd)
        mean_g = np.float32(sums[1, c] / count) if coupled else np.float32(0.0)
        mean_gx = np.float32(sums[2, c] / count * istd) if coupled else np.float32(0.0)
        mu32 = np.float32(mean[c])
        for i in range(n):
            for s in range(spatial):
                dst[i, c, s] = k * (
                    passed(g, active, relu, i, c, s) - mean_g - (src[i, c, s] - mu32) * mean_gx
                )
