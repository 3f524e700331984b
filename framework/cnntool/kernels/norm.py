"""Batch normalisation per channel of (N, C, S) data: S = H*W for images, 1 for flat features.

Training normalises with the batch's mean and biased variance and moves the running
estimates towards the batch's mean and unbiased variance, as PyTorch does; inference
normalises with the running estimates. The mean and 1/sqrt(var + eps) that were used are
kept per channel, so the backward pass recomputes x̂ instead of storing it.
"""

import math

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_forward(
    x, weight, bias, running_mean, running_var, training, momentum, eps, mean, inv_std, mode, out
):
    """out = weight * (x - mean) / sqrt(var + eps) + bias per channel; in training, mean and
    var come from the batch and running = (1 - momentum) * running + momentum * batch
    (the unbiased variance; unchanged when a channel has a single value)."""
    n = x.shape[0]
    channels = weight.shape[0]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    dst = out.reshape((n, channels, spatial))
    count = n * spatial
    mode[0] = 1.0 if training else 0.0
    for c in range(channels):
        if training:
            total = 0.0
            for i in range(n):
                for s in range(spatial):
                    total += src[i, c, s]
            mu = total / count
            squares = 0.0
            for i in range(n):
                for s in range(spatial):
                    d = src[i, c, s] - mu
                    squares += d * d
            var = squares / count
            running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
            if count > 1:
                running_var[c] = (1.0 - momentum) * running_var[c] + momentum * squares / (count - 1)
        else:
            mu = running_mean[c]
            var = running_var[c]
        scale_std = 1.0 / math.sqrt(var + eps)
        mean[c] = mu
        inv_std[c] = scale_std
        scale = np.float32(weight[c] * scale_std)
        shift = np.float32(bias[c] - mu * weight[c] * scale_std)
        for i in range(n):
            for s in range(spatial):
                dst[i, c, s] = src[i, c, s] * scale + shift


@njit(cache=True, fastmath=True, nogil=True)
def batchnorm_backward(grad_out, x, weight, mean, inv_std, mode, need_grad_x, grad_weight, grad_bias, grad_x):
    """With x̂ = (x - mean) * inv_std and g = grad_out: dbias = Σg, dweight = Σ g x̂ (sums over
    N and S); dx = weight * inv_std * (g - mean(g) - x̂ mean(g x̂)) after a training forward
    (the batch statistics depend on x), dx = weight * inv_std * g after an inference one."""
    n = x.shape[0]
    channels = weight.shape[0]
    spatial = x.size // max(n * channels, 1)
    src = x.reshape((n, channels, spatial))
    g = grad_out.reshape((n, channels, spatial))
    dst = grad_x.reshape((n, channels, spatial))
    count = n * spatial
    coupled = mode[0] != 0.0
    for c in range(channels):
        mu = mean[c]
        istd = inv_std[c]
        sum_g = 0.0
        sum_gx = 0.0
        for i in range(n):
            for s in range(spatial):
                v = g[i, c, s]
                sum_g += v
                sum_gx += v * (src[i, c, s] - mu) * istd
        grad_bias[c] = sum_g
        grad_weight[c] = sum_gx
        if not need_grad_x:
            continue
        k = np.float32(weight[c] * istd)
        mean_g = np.float32(sum_g / count) if coupled else np.float32(0.0)
        mean_gx = np.float32(sum_gx / count * istd) if coupled else np.float32(0.0)
        mu32 = np.float32(mu)
        for i in range(n):
            for s in range(spatial):
                dst[i, c, s] = k * (g[i, c, s] - mean_g - (src[i, c, s] - mu32) * mean_gx)
