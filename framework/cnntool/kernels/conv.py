"""2-D convolution, image by image, as matrix products (BLAS sgemm).

Shapes: x (N, C, H, W), weight (O, C, KH, KW), out (N, O, OH, OW).

Stride 1 ("shifted products"): with the image padded to (C, HP, WP) and flattened per
channel, the input values a kernel tap (i, j) meets are one contiguous run per channel,
starting at i*WP + j. So out[n] = sum over taps of W_ij (O, C) @ X_ij (C, L), where X_ij is a
strided view of the image, no copy at all. The product is computed on rows of width WP (the
last KW - 1 columns of each row are spill-over and dropped), L = OH*WP - (KW - 1). The
backward pass is the same trick transposed.

Any stride (im2col): cols[n] (C*KH*KW, OH*OW) gets, in row (c*KH + i)*KW + j and column
p*OW + q, the value x[n, c, p*SH + i - PT, q*SW + j - PL] (zero in the padding); then
out[n] = weight (O, C*KH*KW) @ cols[n].
"""

import numpy as np
from numba import njit

from cnntool.kernels.blas import NO, YES, gemm


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def valid_range(size, kernel_offset, stride, pad, out_size):
    """The output positions q with 0 <= q*stride + kernel_offset - pad < size."""
    start = 0
    shift = kernel_offset - pad
    if shift < 0:
        start = (-shift + stride - 1) // stride
    stop = 0
    if size - shift > 0:
        stop = (size - shift + stride - 1) // stride
    return start, max(start, min(out_size, stop))


@njit(cache=True, fastmath=True, nogil=True)
def im2col(image, kh, kw, sh, sw, pad_top, pad_left, oh, ow, cols):
    """cols[(c*KH + i)*KW + j, p*OW + q] = image[c, p*SH + i - PT, q*SW + j - PL] (0 outside)."""
    channels, height, width = image.shape
    plane = oh * ow
    source = image.reshape(image.size)
    target = cols.reshape(cols.size)
    zero = np.float32(0.0)
    for c in range(channels):
        for i in range(kh):
            p0, p1 = valid_range(height, i, sh, pad_top, oh)
            for j in range(kw):
                row = ((c * kh + i) * kw + j) * plane
                q0, q1 = valid_range(width, j, sw, pad_left, ow)
                for k in range(row, row + p0 * ow):
                    target[k] = zero
                for k in range(row + p1 * ow, row + plane):
                    target[k] = zero
                for p in range(p0, p1):
                    start = row + p * ow
                    # image index of output column q: origin + q * SW
                    origin = (c * height + p * sh + i - pad_top) * width + j - pad_left
                    for q in range(q0):
                        target[start + q] = zero
                    if sw == 1:
                        for q in range(q0, q1):
                            target[start + q] = source[origin + q]
                    else:
                        for q in range(q0, q1):
                            target[start + q] = source[origin + q * sw]
                    for q in range(q1, ow):
                        target[start + q] = zero


@njit(cache=True, fastmath=True, nogil=True)
def col2im(cols, kh, kw, sh, sw, pad_top, pad_left, oh, ow, grad_image):
    """The adjoint of im2col: grad_image[c, h, w] = sum of the cols entries that read it."""
    channels, height, width = grad_image.shape
    plane = oh * ow
    source = cols.reshape(cols.size)
    target = grad_image.reshape(grad_image.size)
    target[:] = 0.0
    for c in range(channels):
        for i in range(kh):
            p0, p1 = valid_range(height, i, sh, pad_top, oh)
            for j in range(kw):
                row = ((c * kh + i) * kw + j) * plane
                q0, q1 = valid_range(width, j, sw, pad_left, ow)
                for p in range(p0, p1):
                    start = row + p * ow
                    origin = (c * height + p * sh + i - pad_top) * width + j - pad_left
                    if sw == 1:
                        for q in range(q0, q1):
                            target[origin + q] += source[start + q]
                    else:
                        for q in range(q0, q1):
                            target[origin + q * sw] += source[start + q]


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward(x, weight, bias, use_bias, sh, sw, pad_top, pad_left, cols, out):
    """out[n, o] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_padded[n, c, p*SH + i, q*SW + j].

    cols is (N, C*KH*KW, OH*OW) and keeps every image's columns for the backward pass.
    """
    n_images, out_channels, oh, ow = out.shape
    kh, kw = weight.shape[2], weight.shape[3]
    rows, plane = cols.shape[1], cols.shape[2]
    weight2 = weight.reshape((out_channels, rows))
    for n in range(n_images):
        im2col(x[n], kh, kw, sh, sw, pad_top, pad_left, oh, ow, cols[n])
        result = out[n].reshape((out_channels, plane))
        np.dot(weight2, cols[n], result)
        if use_bias:
            for o in range(out_channels):
                b = bias[o]
                for p in range(plane):
                    result[o, p] += b


@njit(cache=True, fastmath=True, nogil=True)
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
    grad_cols,
    weight_step,
    grad_weight,
    grad_bias,
    grad_x,
):
    """Per image n, with G = grad_out[n] as (O, OH*OW):
    dW += G @ cols[n].T,  db += G summed over positions,  dx[n] = col2im(W.T @ G).

    grad_cols (C*KH*KW, OH*OW) and weight_step (O, C*KH*KW) are scratch.
    """
    n_images, out_channels, oh, ow = grad_out.shape
    kh, kw = weight.shape[2], weight.shape[3]
    rows, plane = cols.shape[1], cols.shape[2]
    weight2 = weight.reshape((out_channels, rows))
    grad_weight2 = grad_weight.reshape((out_channels, rows))
    grad_weight2[:] = 0.0
    if use_bias:
        grad_bias[:] = 0.0
    for n in range(n_images):
        g = grad_out[n].reshape((out_channels, plane))
        np.dot(g, cols[n].T, weight_step)
        grad_weight2 += weight_step
        if use_bias:
            for o in range(out_channels):
                total = np.float32(0.0)
                for p in range(plane):
                    total += g[o, p]
                grad_bias[o] += total
        if need_grad_x:
            np.dot(weight2.T, g, grad_cols)
            col2im(grad_cols, kh, kw, sh, sw, pad_top, pad_left, oh, ow, grad_x[n])


@njit(cache=True, fastmath=True, nogil=True)
def pad_image(image, pad_top, pad_left, padded):
    """padded = image surrounded by zeros (pad_top rows above, pad_left columns to the left)."""
    channels, height, width = image.shape
    padded[:] = 0.0
    for c in range(channels):
        for h in range(height):
            for w in range(width):
                padded[c, pad_top + h, pad_left + w] = image[c, h, w]


@njit(cache=True, fastmath=True, nogil=True)
def repack_taps(weight, taps):
    """taps[i*KW + j, o, c] = weight[o, c, i, j]: one (O, C) matrix per kernel tap."""
    out_channels, channels, kh, kw = weight.shape
    for o in range(out_channels):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    taps[i * kw + j, o, c] = weight[o, c, i, j]


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_shifted(x, weight, bias, use_bias, pad_top, pad_left, taps, padded, full, out):
    """Stride-1 convolution: out[n] = bias + sum_{i,j} W_ij @ X_ij (see the module docs).

    Scratch: taps (KH*KW, O, C), padded (C, HP, WP) (unused without padding),
    full (O, OH*WP).
    """
    n_images, out_channels, oh, ow = out.shape
    channels, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    padding = padded.shape[1] != x.shape[2] or padded.shape[2] != x.shape[3]
    hp, wp = (padded.shape[1], padded.shape[2]) if padding else (x.shape[2], x.shape[3])
    span = oh * wp - (kw - 1)
    repack_taps(weight, taps)
    flat_full = full.reshape(full.size)
    for n in range(n_images):
        if padding:
            pad_image(x[n], pad_top, pad_left, padded)
            source = padded.reshape(padded.size)
        else:
            source = x[n].reshape(channels * hp * wp)
        for i in range(kh):
            for j in range(kw):
                tap = taps[i * kw + j].reshape(out_channels * channels)
                beta = 0.0 if i == 0 and j == 0 else 1.0
                gemm(NO, NO, out_channels, span, channels, 1.0, tap, channels,
                     source[i * wp + j :], hp * wp, beta, flat_full, oh * wp)  # fmt: skip
        for o in range(out_channels):
            b = bias[o] if use_bias else np.float32(0.0)
            for p in range(oh):
                for q in range(ow):
                    out[n, o, p, q] = full[o, p * wp + q] + b


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_backward_shifted(
    grad_out, x, weight, use_bias, need_grad_x, pad_top, pad_left,
    taps, tap_grads, padded, padded_grad, full, grad_weight, grad_bias, grad_x,
):  # fmt: skip
    """Stride-1 backward, per image with G = grad_out[n] spread on rows of width WP:
    dW_ij = sum_n G @ X_ij.T,  db = sum of G,  dX_ij += W_ij.T @ G (then cropped).

    taps must hold the repacked weights of the forward pass. Scratch: tap_grads
    (KH*KW, O, C), padded and padded_grad (C, HP, WP), full (O, OH*WP).
    """
    n_images, out_channels, oh, ow = grad_out.shape
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    padding = padded.shape[1] != height or padded.shape[2] != width
    hp, wp = (padded.shape[1], padded.shape[2]) if padding else (height, width)
    span = oh * wp - (kw - 1)
    flat_full = full.reshape(full.size)
    full[:] = 0.0
    if use_bias:
        grad_bias[:] = 0.0
    for n in range(n_images):
        for o in range(out_channels):
            total = np.float32(0.0)
            for p in range(oh):
                for q in range(ow):
                    g = grad_out[n, o, p, q]
                    full[o, p * wp + q] = g
                    total += g
            if use_bias:
                grad_bias[o] += total
        if padding:
            pad_image(x[n], pad_top, pad_left, padded)
            source = padded.reshape(padded.size)
        else:
            source = x[n].reshape(channels * hp * wp)
        beta = 0.0 if n == 0 else 1.0
        for i in range(kh):
            for j in range(kw):
                tap_grad = tap_grads[i * kw + j].reshape(out_channels * channels)
                gemm(NO, YES, out_channels, channels, span, 1.0, flat_full, oh * wp,
                     source[i * wp + j :], hp * wp, beta, tap_grad, channels)  # fmt: skip
        if need_grad_x:
            target = padded_grad if padding else grad_x[n]
            target[:] = 0.0
            flat_target = target.reshape(channels * hp * wp)
            for i in range(kh):
                for j in range(kw):
                    gemm(YES, NO, channels, span, out_channels, 1.0,
                         taps[i * kw + j].reshape(out_channels * channels), channels,
                         flat_full, oh * wp, 1.0, flat_target[i * wp + j :], hp * wp)  # fmt: skip
            if padding:
                for c in range(channels):
                    for h in range(height):
                        for w in range(width):
                            grad_x[n, c, h, w] = padded_grad[c, pad_top + h, pad_left + w]
    for o in range(out_channels):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    grad_weight[o, c, i, j] = tap_grads[i * kw + j, o, c]
