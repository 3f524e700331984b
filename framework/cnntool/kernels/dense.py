"""Fully connected layer: x (N, F_in), weight (F_out, F_in), out (N, F_out)."""

from numba import njit

from cnntool.kernels.blas import NO, YES, gemm
from cnntool.kernels.parts import share


@njit(cache=True, fastmath=True, nogil=True)
def dense_forward(x, weight, bias, use_bias, out):
    """out = x @ weight.T + bias."""
    n, f_out = out.shape
    f_in = x.shape[1]
    gemm(NO, YES, n, f_out, f_in, 1.0, x.reshape(x.size), f_in, weight.reshape(weight.size), f_in,
         0.0, out.reshape(out.size), f_out)  # fmt: skip
    if use_bias:
        for row in range(n):
            for k in range(f_out):
                out[row, k] += bias[k]


@njit(cache=True, fastmath=True, nogil=True)
def dense_backward(grad_out, x, weight, use_bias, need_grad_x, grad_weight, grad_bias, grad_x):
    """dW = grad_out.T @ x, db = grad_out summed over the batch, dx = grad_out @ weight."""
    n, f_out = grad_out.shape
    f_in = x.shape[1]
    flat_grad = grad_out.reshape(grad_out.size)
    gemm(YES, NO, f_out, f_in, n, 1.0, flat_grad, f_out, x.reshape(x.size), f_in,
         0.0, grad_weight.reshape(grad_weight.size), f_in)  # fmt: skip
    if use_bias:
        for k in range(f_out):
            grad_bias[k] = 0.0
        for row in range(n):
            for k in range(f_out):
                grad_bias[k] += grad_out[row, k]
    if need_grad_x:
        gemm(NO, NO, n, f_in, f_out, 1.0, flat_grad, f_out, weight.reshape(weight.size), f_in,
             0.0, grad_x.reshape(grad_x.size), f_in)  # fmt: skip


@njit(cache=True, fastmath=True, nogil=True)
def dense_forward_part(x, weight, bias, use_bias, out, part, parts):
    """Part `part` of `parts` of dense_forward: its share of the units (of the rows of the
    weight, each part reading only its own)."""
    n, f_out = out.shape
    f_in = x.shape[1]
    first, last = share(f_out, part, parts)
    if last == first:
        return
    rows = weight[first:last]
    gemm(NO, YES, n, last - first, f_in, 1.0, x.reshape(x.size), f_in, rows.reshape(rows.size), f_in,
         0.0, out.reshape(out.size)[first:], f_out)  # fmt: skip
    if use_bias:
        for row in range(n):
            for k in range(first, last):
                out[row, k] += bias[k]
