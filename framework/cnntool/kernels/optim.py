"""In-place parameter updates, following PyTorch's definitions (see cnntool.training.optim)."""

import math

import numpy as np
from numba import njit

from cnntool.kernels.blas import axpy

# From this many parameters on, plain SGD's update is one saxpy, shared by the BLAS threads:
# at batch size 1 the update of a large dense layer is pure memory traffic (about 15% of
# a step of models/mnist_cnn.json), and one core cannot saturate it.
AXPY_MIN_SIZE = 1 << 16


@njit(cache=True, fastmath=True, nogil=True)
def sgd_update(param, grad, velocity, lr, momentum, dampening, weight_decay, nesterov, first):
    """g = grad + wd*p; v = g (first step) or momentum*v + (1 - dampening)*g;
    p -= lr * (g + momentum*v if nesterov else v); without momentum p -= lr * g."""
    p = param.reshape(param.size)
    d = grad.reshape(grad.size)
    if momentum == 0.0 and weight_decay == 0.0 and p.size >= AXPY_MIN_SIZE:
        axpy(-np.float32(lr), d, p)  # element by element, as the loop below
        return
    v = velocity.reshape(velocity.size)
    lr32 = np.float32(lr)
    mu = np.float32(momentum)
    keep = np.float32(1.0 - dampening)
    wd = np.float32(weight_decay)
    for i in range(p.size):
        g = d[i] + wd * p[i]
        if momentum != 0.0:
            if first:
                v[i] = g
            else:
                v[i] = mu * v[i] + keep * g
            g = g + mu * v[i] if nesterov else v[i]
        p[i] -= lr32 * g


@njit(cache=True, fastmath=True, nogil=True)
def adam_update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """Adam (decoupled=False: g += wd*p) and AdamW (decoupled=True: p *= 1 - lr*wd):
    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)."""
    p = param.reshape(param.size)
    d = grad.reshape(grad.size)
    m = exp_avg.reshape(exp_avg.size)
    v = exp_avg_sq.reshape(exp_avg_sq.size)
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    step_size = np.float32(lr / (1.0 - beta1**step))
    inv_sqrt_bc2 = np.float32(1.0 / math.sqrt(1.0 - beta2**step))
    eps32 = np.float32(eps)
    wd = np.float32(weight_decay)
    shrink = np.float32(1.0 - lr * weight_decay)
    for i in range(p.size):
        g = d[i]
        if decoupled:
            p[i] *= shrink
        else:
            g += wd * p[i]
        m[i] = b1 * m[i] + (np.float32(1.0) - b1) * g
        v[i] = b2 * v[i] + (np.float32(1.0) - b2) * g * g
        p[i] -= step_size * m[i] / (np.sqrt(v[i]) * inv_sqrt_bc2 + eps32)
