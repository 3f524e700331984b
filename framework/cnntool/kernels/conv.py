"""2-D convolution, image by image, as matrix products (BLAS sgemm).

Shapes: x (N, C, H, W), weight (O, C, KH, KW), out (N, O, OH, OW).

Stride 1 (wide im2col): with the image padded to (C, HP, WP) and flattened, the values a
kernel tap (c, i, j) meets are one contiguous run, starting at c*HP*WP + i*WP + j. Copying
each run into a row of `cols` (C*KH*KW, L) is a plain memory copy, and
out[n] = weight (O, C*KH*KW) @ cols is one product computed on rows of the padded width WP:
the last KW - 1 columns of each output row are spill-over and are cropped, L = OH*WP - (KW - 1).
The backward pass transposes the same product.

Any stride (im2col): cols[n] (C*KH*KW, OH*OW) gets, in row (c*KH + i)*KW + j and column
p*OW + q, the value x[n, c, p*SH + i - PT, q*SW + j - PL] (zero in the padding); then
out[n] = weight (O, C*KH*KW) @ cols[n].
"""

import math

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
def conv2d_forward(x, weight, bias, use_bias, sh, sw, pad_top, pad_left, relu, cols, out):
    """out[n, o] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_padded[n, c, p*SH + i, q*SW + j]
    (with `relu`, max(that, 0): a ReLU computed here, see fold_batchnorm).

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
        if use_bias or relu:
            floor = np.float32(0.0) if relu else np.float32(-np.inf)
            for o in range(out_channels):
                b = bias[o] if use_bias else np.float32(0.0)
                for p in range(plane):
                    result[o, p] = max(result[o, p] + b, floor)


@njit(cache=True, fastmath=True, nogil=True)
def fold_batchnorm(
    weight, bias, use_bias, norm_weight, norm_bias, running_mean, running_var, eps, folded_weight, folded_bias
):  # fmt: skip
    """A convolution followed by batch norm in inference form as one convolution:
    folded_weight[o] = weight[o] * s[o], folded_bias[o] = (bias[o] - running_mean[o]) * s[o]
    + norm_bias[o], with s = norm_weight / sqrt(running_var + eps) (what onnxruntime does)."""
    out_channels = weight.shape[0]
    per_filter = weight.size // out_channels
    source = weight.reshape((out_channels, per_filter))
    target = folded_weight.reshape((out_channels, per_filter))
    for o in range(out_channels):
        scale = norm_weight[o] / math.sqrt(running_var[o] + eps)
        shift = bias[o] if use_bias else np.float32(0.0)
        folded_bias[o] = np.float32((shift - running_mean[o]) * scale + norm_bias[o])
        scale32 = np.float32(scale)
        for k in range(per_filter):
            target[o, k] = source[o, k] * scale32


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
    weight_t,
    grad_weight,
    grad_bias,
    grad_x,
):
    """Per image n, with G = grad_out[n] as (O, OH*OW):
    dW += G @ cols[n].T,  db += G summed over positions,  dx[n] = col2im(W.T @ G).

    grad_cols (C*KH*KW, OH*OW) and weight_t (C*KH*KW, O) are scratch: dW is accumulated
    transposed, dW.T += cols[n] @ G.T, the orientation in which BLAS runs these products of
    few output channels fastest (1.4x for 16 to 32 channels), and transposed once at the end.
    """
    n_images, out_channels, oh, ow = grad_out.shape
    kh, kw = weight.shape[2], weight.shape[3]
    rows, plane = cols.shape[1], cols.shape[2]
    flat_weight = weight.reshape(weight.size)
    flat_weight_t = weight_t.reshape(weight_t.size)
    flat_grad_cols = grad_cols.reshape(grad_cols.size)
    if use_bias:
        grad_bias[:] = 0.0
    for n in range(n_images):
        flat_g = grad_out[n].reshape(out_channels * plane)
        flat_cols = cols[n].reshape(rows * plane)
        beta = 0.0 if n == 0 else 1.0
        gemm(NO, YES, rows, out_channels, plane, 1.0, flat_cols, plane, flat_g, plane, beta,
             flat_weight_t, out_channels)  # fmt: skip
        if use_bias:
            sum_positions(flat_g, out_channels, plane, grad_bias)
        if need_grad_x:
            gemm(YES, NO, rows, plane, out_channels, 1.0, flat_weight, rows, flat_g, plane, 0.0,
                 flat_grad_cols, plane)  # fmt: skip
            col2im(grad_cols, kh, kw, sh, sw, pad_top, pad_left, oh, ow, grad_x[n])
    untranspose(weight_t, n_images, grad_weight)


@njit(cache=True, fastmath=True, nogil=True)
def sum_positions(flat_g, out_channels, plane, grad_bias):
    """grad_bias[o] += sum of the row o of G (O, plane), given flat."""
    for o in range(out_channels):
        row = flat_g[o * plane : o * plane + plane]
        total = np.float32(0.0)
        for p in range(plane):
            total += row[p]
        grad_bias[o] += total


@njit(cache=True, fastmath=True, nogil=True)
def untranspose(weight_t, n_images, grad_weight):
    """grad_weight (O, C, KH, KW) = weight_t (C*KH*KW, O) transposed (zero without images)."""
    out_channels = grad_weight.shape[0]
    rows = grad_weight.size // out_channels
    target = grad_weight.reshape((out_channels, rows))
    if n_images == 0:
        target[:] = 0.0
        return
    for r in range(rows):
        source = weight_t[r]
        for o in range(out_channels):
            target[o, r] = source[o]


@njit(cache=True, fastmath=True, nogil=True)
def pad_image(image, pad_top, pad_left, padded):
    """padded = image surrounded by zeros (pad_top rows above, pad_left columns to the left)."""
    channels, height, width = image.shape
    padded[:] = 0.0
    for c in range(channels):
        for h in range(height):
            source = image[c, h]
            target = padded[c, pad_top + h, pad_left : pad_left + width]
            for w in range(width):
                target[w] = source[w]


@njit(cache=True, fastmath=True, nogil=True)
def im2col_rows(image, channels, height, width, kh, kw, span, cols):
    """Wide im2col for stride 1: cols[(c*KH + i)*KW + j, l] = image[c*H*W + i*W + j + l], one
    contiguous run per row (image is one padded image, flattened; l < span)."""
    # Indices into the slices are loop counters only: numba then knows they are not
    # negative, drops its wraparound checks and the copies vectorise.
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                start = c * height * width + i * width + j
                source = image[start : start + span]
                for k in range(span):
                    row[k] = source[k]


@njit(cache=True, fastmath=True, nogil=True)
def col2im_rows(cols, channels, height, width, kh, kw, span, grad_image):
    """The adjoint of im2col_rows: each row of cols is added back onto its run of the image."""
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                start = c * height * width + i * width + j
                target = grad_image[start : start + span]
                for k in range(span):
                    target[k] += row[k]


@njit(cache=True, fastmath=True, nogil=True)
def image_columns(image, kh, kw, pad_top, pad_left, padded, cols):
    """cols = the wide im2col of one image (padded first, into `padded`, when that is larger
    than the image); returns the padded width WP the columns are laid out on."""
    channels, height, width = image.shape
    if padded.shape[1] != height or padded.shape[2] != width:
        pad_image(image, pad_top, pad_left, padded)
        im2col_rows(
            padded.reshape(padded.size),
            channels,
            padded.shape[1],
            padded.shape[2],
            kh,
            kw,
            cols.shape[1],
            cols,
        )
        return padded.shape[2]
    im2col_rows(image.reshape(image.size), channels, height, width, kh, kw, cols.shape[1], cols)
    return width


@njit(cache=True, fastmath=True, nogil=True)
def wide_product(image, weight, pad_top, pad_left, padded, cols, full):
    """full = W (O, C*KH*KW) @ cols: one image's stride-1 convolution on rows of the padded
    width WP (the last KW - 1 columns of each row spill over); returns WP."""
    out_channels, rows, span = weight.shape[0], cols.shape[0], cols.shape[1]
    wp = image_columns(image, weight.shape[2], weight.shape[3], pad_top, pad_left, padded, cols)
    gemm(NO, NO, out_channels, span, rows, 1.0, weight.reshape(weight.size), rows, cols.reshape(cols.size),
         span, 0.0, full.reshape(full.size), full.shape[1])  # fmt: skip
    return wp


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_wide(x, weight, bias, use_bias, keep, relu, pad_top, pad_left, padded, columns, full, out):
    """Stride-1 convolution with wide im2col: out[n] = W (O, C*KH*KW) @ cols, computed on rows
    of the padded width WP and cropped to OW (see the module docs).

    columns is (N, C*KH*KW, L) when `keep` (each image's columns stay for the backward pass;
    small layers) or (1, C*KH*KW, L) shared scratch. Scratch: padded (C, HP, WP) (unused
    without padding), full (O, OH*WP). With `relu`, out = max(conv, 0): a ReLU layer that
    follows is computed here (see cnntool.compile.plan).
    """
    for n in range(out.shape[0]):
        cols = columns[n] if keep else columns[0]
        wp = wide_product(x[n], weight, pad_top, pad_left, padded, cols, full)
        crop(full, wp, bias, use_bias, relu, out[n])


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_backward_wide(
    grad_out, x, weight, use_bias, keep, need_grad_x, relu, activated, pad_top, pad_left,
    padded, padded_grad, columns, full, weight_t, grad_weight, grad_bias, grad_x,
):  # fmt: skip
    """Stride-1 backward with wide im2col, per image with G = grad_out[n] on rows of width WP
    (zeros in the cropped columns): dW += G @ cols.T, db += sum of G, dX = col2im(W.T @ G).
    dW is accumulated transposed into the scratch weight_t (C*KH*KW, O), as in
    conv2d_backward, and transposed once at the end.

    Unless the forward pass kept them (`keep`), each image's columns are rebuilt here: for
    a large layer a contiguous copy costs less than holding them for a whole batch. They
    are then overwritten by dcols = W.T @ G. With `relu`, grad_out is the gradient after a
    fused ReLU whose output was `activated`.
    """
    n_images, out_channels, oh = grad_out.shape[0], grad_out.shape[1], grad_out.shape[2]
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    padding = padded.shape[1] != height or padded.shape[2] != width
    hp, wp = (padded.shape[1], padded.shape[2]) if padding else (height, width)
    rows, span = columns.shape[1], columns.shape[2]
    stride = oh * wp
    flat_weight = weight.reshape(weight.size)
    flat_weight_t = weight_t.reshape(weight_t.size)
    flat_full = full.reshape(full.size)
    full[:] = 0.0
    if use_bias:
        grad_bias[:] = 0.0
    for n in range(n_images):
        widen(grad_out[n], wp, use_bias, grad_bias, relu, activated[n], full)
        cols = columns[n] if keep else columns[0]
        flat_cols = cols.reshape(cols.size)
        if not keep:
            image_columns(x[n], kh, kw, pad_top, pad_left, padded, cols)
        beta = 0.0 if n == 0 else 1.0
        # dW.T (+)= cols @ G.T
        gemm(NO, YES, rows, out_channels, span, 1.0, flat_cols, span, flat_full, stride, beta,
             flat_weight_t, out_channels)  # fmt: skip
        if need_grad_x:
            # dcols = W.T @ G, then added back onto the image
            gemm(YES, NO, rows, span, out_channels, 1.0, flat_weight, rows, flat_full, stride, 0.0,
                 flat_cols, span)  # fmt: skip
            target = padded_grad if padding else grad_x[n]
            target[:] = 0.0
            col2im_rows(cols, channels, hp, wp, kh, kw, span, target.reshape(channels * hp * wp))
            if padding:
                crop_padding(padded_grad, pad_top, pad_left, grad_x[n])
    untranspose(weight_t, n_images, grad_weight)


@njit(cache=True, fastmath=True, nogil=True)
def crop(full, wp, bias, use_bias, relu, out):
    """out[o, p, q] = full[o, p*WP + q] + bias[o]: the product's rows cut to the output width;
    with `relu`, max(that, 0) (a following ReLU layer fused in)."""
    out_channels, oh, ow = out.shape
    floor = np.float32(0.0) if relu else np.float32(-np.inf)
    for o in range(out_channels):
        b = bias[o] if use_bias else np.float32(0.0)
        for p in range(oh):
            source = full[o, p * wp : p * wp + ow]
            target = out[o, p]
            for q in range(ow):
                target[q] = max(source[q] + b, floor)


@njit(cache=True, fastmath=True, nogil=True)
def widen(grad, wp, use_bias, grad_bias, relu, activated, full):
    """full[o, p*WP + q] = grad[o, p, q] (the columns past OW stay as they are: zero), and
    grad_bias[o] += sum of grad[o]. With `relu`, grad is the gradient after a fused ReLU and
    passes only where its output `activated` is positive."""
    out_channels, oh, ow = grad.shape
    zero = np.float32(0.0)
    for o in range(out_channels):
        total = np.float32(0.0)
        for p in range(oh):
            source = grad[o, p]
            target = full[o, p * wp : p * wp + ow]
            if relu:
                mask = activated[o, p]
                for q in range(ow):
                    g = source[q] if mask[q] > zero else zero
                    target[q] = g
                    total += g
                continue
            for q in range(ow):
                target[q] = source[q]
                total += source[q]
        if use_bias:
            grad_bias[o] += total


@njit(cache=True, fastmath=True, nogil=True)
def crop_padding(padded, pad_top, pad_left, image):
    """image = the part of padded inside the padding (the adjoint of pad_image)."""
    channels, height, width = image.shape
    for c in range(channels):
        for h in range(height):
            source = padded[c, pad_top + h, pad_left : pad_left + width]
            target = image[c, h]
            for w in range(width):
                target[w] = source[w]


@njit(cache=True, fastmath=True, nogil=True)
def crop_relu_pool(full, wp, bias, use_bias, out):
    """out[o, p, q] = max(0, bias[o] + max of full over the 2x2 window at (2p, 2q)): a conv's
    product cropped, a ReLU and a 2x2 max-pool in one pass (inference only: nothing for a
    backward pass is kept)."""
    out_channels, oh, ow = out.shape
    zero = np.float32(0.0)
    for o in range(out_channels):
        b = bias[o] if use_bias else zero
        for p in range(oh):
            top = full[o, 2 * p * wp : 2 * p * wp + 2 * ow]
            bottom = full[o, (2 * p + 1) * wp : (2 * p + 1) * wp + 2 * ow]
            target = out[o, p]
            for q in range(ow):
                best = max(max(top[2 * q], top[2 * q + 1]), max(bottom[2 * q], bottom[2 * q + 1]))
                target[q] = max(best + b, zero)


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_relu_pool_wide(x, weight, bias, use_bias, pad_top, pad_left, padded, columns, full, out):
    """Inference of conv2d (stride 1), ReLU and 2x2 max-pool together: the wide im2col
    product per image, then crop_relu_pool straight into the pooled output."""
    for n in range(out.shape[0]):
        wp = wide_product(x[n], weight, pad_top, pad_left, padded, columns[0], full)
        crop_relu_pool(full, wp, bias, use_bias, out[n])
