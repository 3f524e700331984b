"""Inverted dropout with masks from a counter-based hash, so no random state is shared.

Whether element i of example e is kept is a pure function of (seed, step, layer salt,
e, i): splitmix64's mixing function applied along that chain. The same network, seed and
step give the same mask however the batch is cut across threads, and a resumed run draws
exactly the masks an uninterrupted one would.
"""

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def mix64(z):
    """splitmix64's finaliser: a bijection of uint64 in which every input bit flips about
    half of the output bits."""
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def example_key(seed, step, salt, example):
    """The hash state of one example of one step of one layer."""
    key = mix64(np.uint64(seed) ^ (np.uint64(salt) * GOLDEN))
    key = mix64(key + np.uint64(step) * GOLDEN)
    return mix64(key + np.uint64(example) * GOLDEN)


@njit(cache=True, fastmath=True, nogil=True)
def dropout_forward(x, rate, salt, random, offset, training, mode, mask, out):
    """Training: mask[e, i] = 1 if the top 24 bits of mix64(key(e) + (i + 1) * golden) are
    at least rate * 2^24, else 0, with e = offset + row and (seed, step) = random;
    out = x * mask / (1 - rate). Inference: out = x."""
    n = x.shape[0]
    size = x.size // max(n, 1)
    src = x.reshape((n, size))
    dst = out.reshape((n, size))
    keep = mask.reshape((n, size))
    mode[0] = 1.0 if training else 0.0
    if not training:
        for e in range(n):
            for i in range(size):
                dst[e, i] = src[e, i]
        return
    threshold = np.uint64(rate * 16777216.0)
    scale = np.float32(1.0 / (1.0 - rate))
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for e in range(n):
        key = example_key(random[0], random[1], salt, offset + e)
        for i in range(size):
            kept = (mix64(key + np.uint64(i + 1) * GOLDEN) >> np.uint64(40)) >= threshold
            keep[e, i] = one if kept else zero
            dst[e, i] = src[e, i] * scale if kept else zero


@njit(cache=True, fastmath=True, nogil=True)
def dropout_backward(grad_out, mask, rate, mode, grad_x):
    """dx = grad_out * mask / (1 - rate) after a training forward, grad_out after inference."""
    n = grad_out.shape[0]
    size = grad_out.size // max(n, 1)
    g = grad_out.reshape((n, size))
    keep = mask.reshape((n, size))
    dst = grad_x.reshape((n, size))
    if mode[0] == 0.0:
        for e in range(n):
            for i in range(size):
                dst[e, i] = g[e, i]
        return
    scale = np.float32(1.0 / (1.0 - rate))
    for e in range(n):
        for i in range(size):
            dst[e, i] = g[e, i] * keep[e, i] * scale
