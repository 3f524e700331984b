"""Fully connected layer: x (N, F_in), weight (F_out, F_in), out (N, F_out)."""

from numba import njit

from cnntool.kernels.blas import NO, YES, gemm


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
