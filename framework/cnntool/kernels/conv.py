"""2-D convolution, image by image, as matrix products (BLAS sgemm).

Shapes: x (N, C, H, W), weight (O, C, KH, KW), out (N, O, OH, OW).

Wide im2col, stride 1: with the image padded to (C, HP, WP) and flattened, the values a
kernel tap (c, i, j) meets are one contiguous run, starting at c*HP*WP + i*WP + j. Copying
each run into a row of `cols` (C*KH*KW, L) is a plain memory copy, and
out[n] = weight (O, C*KH*KW) @ cols is one product computed on rows of the padded width WP:
the last KW - 1 columns of each output row are spill-over and are cropped, L = OH*WP - (KW - 1).
The backward pass transposes the same product.

Any stride (SH, SW): the padded image is first cut into its SH*SW phases,
phases[(a*SW + b)*C + c, u, v] = x_padded[c, u*SH + a, v*SW + b], each (HQ, WQ) with
HQ = OH + (KH - 1) // SH and WQ = OW + (KW - 1) // SW. Tap (c, i, j) at output (p, q) reads
x_padded[c, p*SH + i, q*SW + j] = phase (i % SH, j % SW) of channel c at (p + i // SH,
q + j // SW): again one contiguous run per tap, on rows of width WQ, with
L = (OH - 1)*WQ + OW. Stride 1 is the case of one phase, the padded image itself. A strided
gather per tap (9 per channel for 3x3) becomes one strided pass over the image and
contiguous copies (2.4x faster for 16 channels at 28x28, stride 2).

Output rows [first, last) of one image need only the columns l in [first*WQ, last*WQ) of
every run: the `_part` kernels compute a part's share of the rows this way, for
predict_parts (kernels/parts.py), each part its own columns and product.
"""

import math

import numpy as np
from numba import njit

from cnntool.kernels.blas import NO, YES, gemm
from cnntool.kernels.parts import share


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


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def run_start(c, i, j, channels, sh, sw, hq, wq):
    """Where tap (c, i, j)'s run begins in the flattened phases (see the module docs)."""
    phase = (i % sh) * sw + j % sw
    return (phase * channels + c) * hq * wq + (i // sh) * wq + j // sw


@njit(cache=True, fastmath=True, nogil=True)
def im2col_rows(image, channels, hq, wq, kh, kw, sh, sw, span, cols):
    """Wide im2col: cols[(c*KH + i)*KW + j, l] = image[run_start(c, i, j) + l], one contiguous
    run per row (image is the flattened phases, or at stride 1 one image; l < span)."""
    # Indices into the slices are loop counters only: numba then knows they are not
    # negative, drops its wraparound checks and the copies vectorise.
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                start = run_start(c, i, j, channels, sh, sw, hq, wq)
                source = image[start : start + span]
                for k in range(span):
                    row[k] = source[k]


@njit(cache=True, fastmath=True, nogil=True)
def col2im_rows(cols, channels, hq, wq, kh, kw, sh, sw, span, grad_image):
    """The adjoint of im2col_rows: each row of cols is added back onto its run."""
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                start = run_start(c, i, j, channels, sh, sw, hq, wq)
                target = grad_image[start : start + span]
                for k in range(span):
                    target[k] += row[k]


@njit(cache=True, fastmath=True, nogil=True)
def split_phases(image, kh, kw, sh, sw, pad_top, pad_left, phases):
    """phases[(a*SW + b)*C + c, u, v] = image[c, u*SH + a - PT, v*SW + b - PL], zero outside
    the image: the padded image cut into its stride phases (at stride 1, padded). Phases
    no tap reads (a >= KH or b >= KW, as for a 1x1 kernel at stride 2) are left alone."""
    channels, height, width = image.shape
    hq, wq = phases.shape[1], phases.shape[2]
    for a in range(min(sh, kh)):
        u0, u1 = valid_range(height, a, sh, pad_top, hq)
        for b in range(min(sw, kw)):
            v0, v1 = valid_range(width, b, sw, pad_left, wq)
            first = v0 * sw + b - pad_left  # the first column read, >= 0 by valid_range
            for c in range(channels):
                plane = phases[(a * sw + b) * channels + c]
                plane[:] = 0.0
                for u in range(u0, u1):
                    # Copied through slices indexed by loop counters alone: numba then
                    # drops its negative-index checks and the copy vectorises (4x faster).
                    run = plane[u, v0:v1]
                    source = image[c, u * sh + a - pad_top, first:]
                    if sw == 1:
                        for k in range(v1 - v0):
                            run[k] = source[k]
                    else:
                        for k in range(v1 - v0):
                            run[k] = source[k * sw]


@njit(cache=True, fastmath=True, nogil=True)
def merge_phases(phases, kh, kw, sh, sw, pad_top, pad_left, image):
    """image[c, h, w] = phases[(a*SW + b)*C + c, u, v] with h + PT = u*SH + a and
    w + PL = v*SW + b: the adjoint of split_phases (the padding dropped). Pixels in a phase
    no tap reads, or past the last window, get zero."""
    channels, height, width = image.shape
    hq, wq = phases.shape[1], phases.shape[2]
    if sh == 1 and sw == 1:
        # One phase, the padded image: a loop of its own, 3-4x faster than the general one
        # below (which numba does not vectorise as well).
        for c in range(channels):
            plane = phases[c]
            for h in range(height):
                source = plane[h + pad_top, pad_left:]
                target = image[c, h]
                for w in range(width):
                    target[w] = source[w]
        return
    for c in range(channels):
        for h in range(height):
            a, u = (h + pad_top) % sh, (h + pad_top) // sh
            target = image[c, h]
            if sw == 1 and a < kh and u < hq:
                source = phases[a * channels + c, u, pad_left : pad_left + width]
                for w in range(width):
                    target[w] = source[w]
                continue
            target[:] = 0.0
            if a >= kh or u >= hq:
                continue
            for b in range(min(sw, kw)):
                source = phases[(a * sw + b) * channels + c, u]
                v0, v1 = valid_range(width, b, sw, pad_left, wq)
                for v in range(v0, v1):
                    target[v * sw + b - pad_left] = source[v]


@njit(cache=True, fastmath=True, nogil=True)
def zero_phases(phases, channels, kh, kw, sh, sw):
    """Zero the phases some tap reads (all of them at stride 1)."""
    for a in range(min(sh, kh)):
        for b in range(min(sw, kw)):
            first = (a * sw + b) * channels
            phases[first : first + channels] = 0.0


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def uses_phases(image, sh, sw, phases):
    """Whether the columns are read from the phases (any padding or stride) rather than the
    image itself (stride 1 without padding)."""
    return sh != 1 or sw != 1 or phases.shape[1] != image.shape[1] or phases.shape[2] != image.shape[2]


@njit(cache=True, fastmath=True, nogil=True)
def image_columns(image, kh, kw, sh, sw, pad_top, pad_left, padded, cols):
    """cols = the wide im2col of one image (cut into `padded`, its phases, first unless it
    is read as it is); returns the width WQ of the rows the columns are laid out on."""
    channels, height, width = image.shape
    if uses_phases(image, sh, sw, padded):
        hq, wq = padded.shape[1], padded.shape[2]
        if kh == 1 and kw == 1:
            # One tap per channel: the first phase, (C, OH, OW), is the columns themselves.
            split_phases(image, 1, 1, sh, sw, pad_top, pad_left, cols.reshape((channels, hq, wq)))
            return wq
        split_phases(image, kh, kw, sh, sw, pad_top, pad_left, padded)
        im2col_rows(padded.reshape(padded.size), channels, hq, wq, kh, kw, sh, sw, cols.shape[1], cols)
        return wq
    im2col_rows(image.reshape(image.size), channels, height, width, kh, kw, 1, 1, cols.shape[1], cols)
    return width


@njit(cache=True, fastmath=True, nogil=True)
def wide_product(image, weight, sh, sw, pad_top, pad_left, padded, cols, full):
    """full = W (O, C*KH*KW) @ cols: one image's convolution on rows of width WQ (the last
    columns of each row spill over); returns WQ."""
    out_channels, rows, span = weight.shape[0], cols.shape[0], cols.shape[1]
    wq = image_columns(image, weight.shape[2], weight.shape[3], sh, sw, pad_top, pad_left, padded, cols)
    gemm(NO, NO, out_channels, span, rows, 1.0, weight.reshape(weight.size), rows, cols.reshape(cols.size),
         span, 0.0, full.reshape(full.size), full.shape[1])  # fmt: skip
    return wq


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_wide(
    x, weight, bias, use_bias, keep, relu, sh, sw, pad_top, pad_left, padded, columns, full, out
):  # fmt: skip
    """Convolution with wide im2col: out[n] = W (O, C*KH*KW) @ cols, computed on rows of the
    phase width WQ and cropped to OW (see the module docs).

    columns is (N, C*KH*KW, L) when `keep` (each image's columns stay for the backward pass;
    small layers) or (1, C*KH*KW, L) shared scratch. Scratch: padded (SH*SW*C, HQ, WQ), the
    phases (unused at stride 1 without padding), full (O, OH*WQ). With `relu`,
    out = max(conv, 0): a ReLU layer that follows is computed here (see cnntool.compile.plan).
    """
    for n in range(out.shape[0]):
        cols = columns[n] if keep else columns[0]
        wq = wide_product(x[n], weight, sh, sw, pad_top, pad_left, padded, cols, full)
        crop(full, wq, bias, use_bias, relu, out[n])


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_backward_wide(
    grad_out, x, weight, use_bias, keep, need_grad_x, relu, activated, sh, sw, pad_top, pad_left,
    padded, padded_grad, columns, full, weight_t, grad_weight, grad_bias, grad_x,
):  # fmt: skip
    """Backward with wide im2col, per image with G = grad_out[n] on rows of width WQ
    (zeros in the cropped columns): dW += G @ cols.T, db += sum of G, dX = col2im(W.T @ G).
    dW is accumulated transposed into the scratch weight_t (C*KH*KW, O), the orientation
    in which BLAS runs these products of few output channels fastest (1.4x for 16 to 32
    channels), and transposed once at the end.

    Unless the forward pass kept them (`keep`), each image's columns are rebuilt here: for
    a large layer a contiguous copy costs less than holding them for a whole batch. They
    are then overwritten by dcols = W.T @ G, added back onto the phases' gradient
    (padded_grad) and merged into dX. With `relu`, grad_out is the gradient after a fused
    ReLU whose output was `activated`.
    """
    n_images, out_channels, oh = grad_out.shape[0], grad_out.shape[1], grad_out.shape[2]
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    phased = n_images > 0 and uses_phases(x[0], sh, sw, padded)
    hq, wq = (padded.shape[1], padded.shape[2]) if phased else (height, width)
    rows, span = columns.shape[1], columns.shape[2]
    stride = oh * wq
    flat_weight = weight.reshape(weight.size)
    flat_weight_t = weight_t.reshape(weight_t.size)
    flat_full = full.reshape(full.size)
    full[:] = 0.0
    if use_bias:
        grad_bias[:] = 0.0
    for n in range(n_images):
        widen(grad_out[n], wq, use_bias, grad_bias, relu, activated[n], full)
        cols = columns[n] if keep else columns[0]
        flat_cols = cols.reshape(cols.size)
        if not keep:
            image_columns(x[n], kh, kw, sh, sw, pad_top, pad_left, padded, cols)
        beta = 0.0 if n == 0 else 1.0
        # dW.T (+)= cols @ G.T
        gemm(NO, YES, rows, out_channels, span, 1.0, flat_cols, span, flat_full, stride, beta,
             flat_weight_t, out_channels)  # fmt: skip
        if need_grad_x:
            # dcols = W.T @ G, then added back onto the phases (or the image)
            gemm(YES, NO, rows, span, out_channels, 1.0, flat_weight, rows, flat_full, stride, 0.0,
                 flat_cols, span)  # fmt: skip
            if phased and kh == 1 and kw == 1:
                merge_phases(cols.reshape((channels, hq, wq)), 1, 1, sh, sw, pad_top, pad_left, grad_x[n])
            elif phased:
                zero_phases(padded_grad, channels, kh, kw, sh, sw)
                flat_grad = padded_grad.reshape(padded_grad.size)
                col2im_rows(cols, channels, hq, wq, kh, kw, sh, sw, span, flat_grad)
                merge_phases(padded_grad, kh, kw, sh, sw, pad_top, pad_left, grad_x[n])
            else:
                grad_x[n][:] = 0.0
                col2im_rows(cols, channels, hq, wq, kh, kw, 1, 1, span, grad_x[n].reshape(grad_x[n].size))
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
def conv2d_relu_pool_wide(x, weight, bias, use_bias, sh, sw, pad_top, pad_left, padded, columns, full, out):
    """Inference of conv2d, ReLU and 2x2 max-pool together: the wide im2col product per
    image, then crop_relu_pool straight into the pooled output."""
    for n in range(out.shape[0]):
        wp = wide_product(x[n], weight, sh, sw, pad_top, pad_left, padded, columns[0], full)
        crop_relu_pool(full, wp, bias, use_bias, out[n])


@njit(cache=True, fastmath=True, nogil=True)
def wide_rows_product(image, weight, sh, sw, pad_top, pad_left, padded, columns, full, first, last):
    """full[o, (p - first)*WQ + q] = the convolution's output rows [first, last) (and the
    spill-over columns), from the columns l in [first*WQ, last*WQ) of every run, copied into
    `columns` at offset rows*first*WQ (parts sharing one `columns` use disjoint ranges).
    Returns (WQ, the number of columns computed)."""
    channels, height, width = image.shape
    kh, kw = weight.shape[2], weight.shape[3]
    if uses_phases(image, sh, sw, padded):
        hq, wq = padded.shape[1], padded.shape[2]
        split_phases(image, kh, kw, sh, sw, pad_top, pad_left, padded)
        source = padded.reshape(padded.size)
    else:
        hq, wq = height, width
        source = image.reshape(image.size)
    start, stop = first * wq, min(last * wq, columns.shape[-1])
    count = stop - start
    if count <= 0:
        return wq, 0
    rows = channels * kh * kw
    cols = columns.reshape(columns.size)[rows * start : rows * stop]
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = cols[((c * kh + i) * kw + j) * count : ((c * kh + i) * kw + j + 1) * count]
                run = source[run_start(c, i, j, channels, sh, sw, hq, wq) + start :]
                for k in range(count):
                    row[k] = run[k]
    gemm(NO, NO, weight.shape[0], count, rows, 1.0, weight.reshape(weight.size), rows, cols, count,
         0.0, full.reshape(full.size), count)  # fmt: skip
    return wq, count


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_wide_part(
    x, weight, bias, use_bias, keep, relu, sh, sw, pad_top, pad_left, padded, columns, full, out, part, parts
):  # fmt: skip
    """Part `part` of `parts` of conv2d_forward_wide for one image: its share of the output
    rows (wide_rows_product, then cropped as crop does)."""
    first, last = share(out.shape[2], part, parts)
    wq, count = wide_rows_product(x[0], weight, sh, sw, pad_top, pad_left, padded, columns, full, first, last)
    if count == 0:
        return
    flat = full.reshape(full.size)
    floor = np.float32(0.0) if relu else np.float32(-np.inf)
    ow = out.shape[3]
    for o in range(out.shape[1]):
        b = bias[o] if use_bias else np.float32(0.0)
        for p in range(first, last):
            source = flat[o * count + (p - first) * wq :]
            target = out[0, o, p]
            for q in range(ow):
                target[q] = max(source[q] + b, floor)


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_relu_pool_wide_part(
    x, weight, bias, use_bias, sh, sw, pad_top, pad_left, padded, columns, full, out, part, parts
):  # fmt: skip
    """Part `part` of `parts` of conv2d_relu_pool_wide for one image: its share of the pooled
    rows, from the convolution's rows under them."""
    first, last = share(out.shape[2], part, parts)
    wq, count = wide_rows_product(
        x[0], weight, sh, sw, pad_top, pad_left, padded, columns, full, 2 * first, 2 * last
    )
    if count == 0:
        return
    flat = full.reshape(full.size)
    zero = np.float32(0.0)
    ow = out.shape[3]
    for o in range(out.shape[1]):
        b = bias[o] if use_bias else zero
        for p in range(first, last):
            top = flat[o * count + 2 * (p - first) * wq :]
            bottom = flat[o * count + (2 * (p - first) + 1) * wq :]
            target = out[0, o, p]
            for q in range(ow):
                best = max(max(top[2 * q], top[2 * q + 1]), max(bottom[2 * q], bottom[2 * q + 1]))
                target[q] = max(best + b, zero)
