"""2-D convolution as im2col + one matrix product (BLAS through scipy).

Shapes: x (N, C, H, W), weight (O, C, KH, KW), out (N, O, OH, OW). The column buffer
`cols` is (C*KH*KW, N*OH*OW): row `(c*KH + i)*KW + j`, column `(n*OH + p)*OW + q` holds
x[n, c, p*SH + i - PT, q*SW + j - PL] (zero outside the image: the padding).
"""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def im2col(x, kh, kw, sh, sw, pad_top, pad_left, oh, ow, cols):
    """cols[(c*KH + i)*KW + j, (n*OH + p)*OW + q] = x[n, c, p*SH + i - PT, q*SW + j - PL]."""
    n_images, channels, height, width = x.shape
    plane = oh * ow
    zero = np.float32(0.0)
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_images):
                    for p in range(oh):
                        h = p * sh + i - pad_top
                        base = n * plane + p * ow
                        if h < 0 or h >= height:
                            for q in range(ow):
                                cols[row, base + q] = zero
                            continue
                        for q in range(ow):
                            w = q * sw + j - pad_left
                            if 0 <= w < width:
                                cols[row, base + q] = x[n, c, h, w]
                            else:
                                cols[row, base + q] = zero


@njit(cache=True, fastmath=True)
def col2im(cols, kh, kw, sh, sw, pad_top, pad_left, oh, ow, grad_x):
    """The adjoint of im2col: grad_x[n, c, h, w] = sum of the cols entries that read x[n, c, h, w]."""
    n_images, channels, height, width = grad_x.shape
    plane = oh * ow
    grad_x[:] = 0.0
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_images):
                    for p in range(oh):
                        h = p * sh + i - pad_top
                        if h < 0 or h >= height:
                            continue
                        base = n * plane + p * ow
                        for q in range(ow):
                            w = q * sw + j - pad_left
                            if 0 <= w < width:
                                grad_x[n, c, h, w] += cols[row, base + q]


@njit(cache=True, fastmath=True)
def conv2d_forward(x, weight, bias, use_bias, sh, sw, pad_top, pad_left, cols, out_cols, out):
    """out[n, o] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_padded[n, c, p*SH + i, q*SW + j]."""
    n_images, out_channels, oh, ow = out.shape
    kh, kw = weight.shape[2], weight.shape[3]
    plane = oh * ow
    im2col(x, kh, kw, sh, sw, pad_top, pad_left, oh, ow, cols)
    np.dot(weight.reshape((out_channels, cols.shape[0])), cols, out_cols)
    flat = out.reshape((n_images, out_channels, plane))
    for n in range(n_images):
        for o in range(out_channels):
            b = bias[o] if use_bias else np.float32(0.0)
            for p in range(plane):
                flat[n, o, p] = out_cols[o, n * plane + p] + b


@njit(cache=True, fastmath=True)
def conv2d_backward(
    grad_out,
    weight,
    cols,
    use_bias,
    need_grad_x,
    sh,
    sw,
    pad_top,
    pad_left,
    grad_cols_out,
    grad_cols,
    grad_weight,
    grad_bias,
    grad_x,
):
    """dW = G @ cols.T, db = G summed over positions, dcols = W.T @ G, dx = col2im(dcols).

    G is grad_out laid out as (O, N*OH*OW) like the forward's product.
    """
    n_images, out_channels, oh, ow = grad_out.shape
    kh, kw = weight.shape[2], weight.shape[3]
    plane = oh * ow
    flat = grad_out.reshape((n_images, out_channels, plane))
    for o in range(out_channels):
        total = np.float32(0.0)
        for n in range(n_images):
            for p in range(plane):
                g = flat[n, o, p]
                grad_cols_out[o, n * plane + p] = g
                total += g
        if use_bias:
            grad_bias[o] = total
    np.dot(grad_cols_out, cols.T, grad_weight.reshape((out_channels, cols.shape[0])))
    if need_grad_x:
        np.dot(weight.reshape((out_channels, cols.shape[0])).T, grad_cols_out, grad_cols)
        col2im(grad_cols, kh, kw, sh, sw, pad_top, pad_left, oh, ow, grad_x)
