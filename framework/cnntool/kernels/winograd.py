"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016).

Each 2x2 block of an output channel comes from the 4x4 input tile d under it and the 3x3
kernel g as

    Y = A^T [(G g G^T) * (B^T d B)] A        (* elementwise)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over the input channels, the 16 elementwise products become 16 matrix products, one
per position k of the 4x4 transformed tile: M[k] (O, T) = U[k] (O, C) @ V[k] (C, T), with
U[k][o, c] = (G g[o, c] G^T)[k] and V[k][c, t] = (B^T d[c, t] B)[k] for each tile t. That is
16 multiplications per 2x2 block and channel pair where the direct method needs 36 (2.25x
fewer); the transforms are additions. Float32 results differ from the direct sum by a few
units in the last place.

Measured on one core for models/mnist_cnn.json's second convolution (32 -> 64 channels,
26x26), batches of 32: 103 µs per image against 142 µs for the wide im2col product
(kernels/conv.py); the 16 products take 42 µs of it, the transforms (scalar code) the rest.
A single image goes by Winograd too: the wide product would hand BLAS one product large
enough for it to spread over the threads, and on 2 busy cores that costs more than it
gains (ResNet 16 -> 16 channels at 28x28, one image, 2 BLAS threads: 112 µs wide against
103 µs Winograd), while the 16 small products of Winograd stay on one thread.

The backward pass of a layer whose training forward goes by Winograd does too
(conv2d_backward_winograd): the weight gradient as dU[k] = dM[k] @ V[k]^T in the
transformed space, dW = G^T dU G, and the input gradient as the convolution it is at
stride 1, of the output gradient with the kernels flipped and their channels swapped.

The transformed weights U stay in their scratch between calls, with the weights they were
made from (`seen`): repeated inference compares the weights (a vectorised pass, 8 µs for
96 x 96 x 9) instead of transforming them again (41 µs, scalar). With that, a single 7x7
image gains from Winograd too (Conv2D.WINOGRAD_MIN_TILES).

A ReLU and a 2x2 max-pool of stride 2 after the convolution (inference) are applied by the
output transform: each pooling window is exactly one output tile, so the pooled value is
max(max of the tile's 2x2 block + bias, 0) and the unpooled output is never written
(transform_output_pool; mnist_cnn's second convolution, one image on one AVX2 core:
about 200 µs against 250 µs for the wide product with ReLU and pool).

Shapes: x (N, C, H, W), weight (O, C, 3, 3), out (N, O, OH, OW); an image is processed at a
time (its TH*TW tiles, TH = ceil(OH / 2)), which keeps V and M in cache.

U, V and M are stored as 16 flat planes, (16, rows * columns + SKEW): plane k holds the
row-major matrix for position k. The SKEW of 16 floats keeps the planes from starting at
the same offset modulo 4 KiB: the transforms touch all 16 planes at once, and planes whose
size is a multiple of 4 KiB (64 x 144 floats is) land in one set of the L1 cache and evict
each other, which made the transforms 5-7x slower.
"""

import numpy as np
from numba import njit

from cnntool.kernels.blas import NO, YES, gemm
from cnntool.kernels.conv import (
    conv2d_backward_wide,
    conv2d_forward_wide,
    conv2d_forward_wide_part,
    conv2d_relu_pool_wide,
    conv2d_relu_pool_wide_part,
)
from cnntool.kernels.parts import share

SKEW = 16


def plane_shape(rows: int, columns: int) -> tuple[int, int]:
    """The shape of a U, V or M array holding 16 (rows, columns) matrices."""
    return (16, rows * columns + SKEW)


@njit(cache=True, nogil=True)
def same_bits(a, b):
    """Whether the float32 arrays a and b (of one size, contiguous) hold the same bits."""
    x = a.reshape(a.size).view(np.int32)
    y = b.reshape(b.size).view(np.int32)
    for start in range(0, x.size, 1024):
        # OR of the differences over a block, one test a block; the slices are indexed by
        # loop counters alone, so the loop vectorises (5x faster)
        xs, ys = x[start : start + 1024], y[start : start + 1024]
        differ = np.int32(0)
        for i in range(xs.size):
            differ |= xs[i] ^ ys[i]
        if differ != 0:
            return False
    return True


@njit(cache=True, fastmath=True, nogil=True)
def transform_weights(weight, seen, u, o0, o1):
    """u[k, o*C + c] = (G g G^T)[k] for the 3x3 kernel g = weight[o, c], for the filters o in
    [o0, o1), unless u already holds the transform of these weights: `seen` keeps the
    weights u was made from (zero scratch to begin with: zeros, whose transform is zero u).
    Between the calls of repeated inference the weights do not change, and comparing them
    costs a fifth of transforming them (96 -> 96 channels: 41 µs a transform on one AVX2
    core)."""
    if same_bits(weight[o0:o1], seen[o0:o1]):
        return
    seen[o0:o1] = weight[o0:o1]
    channels = weight.shape[1]
    taps = weight.reshape((weight.shape[0] * channels, 9))
    for r in range(o0 * channels, o1 * channels):
        g = taps[r]
        # G g, one column at a time
        a00, a10, a20, a30 = times_g(g[0], g[3], g[6])
        a01, a11, a21, a31 = times_g(g[1], g[4], g[7])
        a02, a12, a22, a32 = times_g(g[2], g[5], g[8])
        # (G g) G^T, one row at a time
        u[0, r], u[1, r], u[2, r], u[3, r] = times_g(a00, a01, a02)
        u[4, r], u[5, r], u[6, r], u[7, r] = times_g(a10, a11, a12)
        u[8, r], u[9, r], u[10, r], u[11, r] = times_g(a20, a21, a22)
        u[12, r], u[13, r], u[14, r], u[15, r] = times_g(a30, a31, a32)


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def times_g(g0, g1, g2):
    """G (g0, g1, g2) = (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)."""
    half = np.float32(0.5)
    return g0, half * (g0 + g1 + g2), half * (g0 - g1 + g2), g2


@njit(cache=True, fastmath=True, nogil=True)
def transform_input(padded, first, tiles_h, tiles_w, v):
    """v[k, c*T + ty*TW + tx] = (B^T d B)[k] for the 4x4 tile d of padded[c] at
    (2*(first + ty), 2*tx), T = TH*TW: TH rows of tiles from tile row `first` on."""
    tiles = tiles_h * tiles_w
    for c in range(padded.shape[0]):
        plane = padded[c]
        for ty in range(tiles_h):
            y = 2 * (first + ty)
            r0, r1, r2, r3 = plane[y], plane[y + 1], plane[y + 2], plane[y + 3]
            base = c * tiles + ty * tiles_w
            for tx in range(tiles_w):
                x = 2 * tx
                a0, a1, a2, a3 = r0[x], r0[x + 1], r0[x + 2], r0[x + 3]
                b0, b1, b2, b3 = r1[x], r1[x + 1], r1[x + 2], r1[x + 3]
                c0, c1, c2, c3 = r2[x], r2[x + 1], r2[x + 2], r2[x + 3]
                e0, e1, e2, e3 = r3[x], r3[x + 1], r3[x + 2], r3[x + 3]
                # B^T d, one column at a time
                t00, t10, t20, t30 = times_bt(a0, b0, c0, e0)
                t01, t11, t21, t31 = times_bt(a1, b1, c1, e1)
                t02, t12, t22, t32 = times_bt(a2, b2, c2, e2)
                t03, t13, t23, t33 = times_bt(a3, b3, c3, e3)
                # (B^T d) B, one row at a time
                t = base + tx
                put_tile_row(v, 0, t, t00, t01, t02, t03)
                put_tile_row(v, 4, t, t10, t11, t12, t13)
                put_tile_row(v, 8, t, t20, t21, t22, t23)
                put_tile_row(v, 12, t, t30, t31, t32, t33)


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def times_bt(d0, d1, d2, d3):
    """B^T (d0, d1, d2, d3) = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def put_tile_row(v, k, t, d0, d1, d2, d3):
    """v[k : k + 4, t] = the row (d0, d1, d2, d3) times B."""
    v[k, t], v[k + 1, t], v[k + 2, t], v[k + 3, t] = times_bt(d0, d1, d2, d3)


@njit(cache=True, fastmath=True, nogil=True)
def transform_output(m, first, tiles_h, tiles_w, bias, use_bias, relu, o0, o1, out):
    """out[o] = Y[o] + bias[o] (max(., 0) with `relu`) for o in [o0, o1), where the 2x2 block
    of Y at tile t is A^T m[:, o*T + t] A, for TH rows of tiles from tile row `first` on; the
    parts of the last blocks beyond an odd-sized `out` are dropped."""
    height, width = out.shape[1], out.shape[2]
    tiles = tiles_h * tiles_w
    floor = np.float32(0.0) if relu else np.float32(-np.inf)
    for o in range(o0, o1):
        b = bias[o] if use_bias else np.float32(0.0)
        target = out[o]
        for ty in range(tiles_h):
            y = 2 * (first + ty)
            for tx in range(tiles_w):
                t = o * tiles + ty * tiles_w + tx
                # A^T m, one column at a time
                s00, s10 = times_at(m[0, t], m[4, t], m[8, t], m[12, t])
                s01, s11 = times_at(m[1, t], m[5, t], m[9, t], m[13, t])
                s02, s12 = times_at(m[2, t], m[6, t], m[10, t], m[14, t])
                s03, s13 = times_at(m[3, t], m[7, t], m[11, t], m[15, t])
                # (A^T m) A, one row at a time
                y00, y01 = times_at(s00, s01, s02, s03)
                y10, y11 = times_at(s10, s11, s12, s13)
                x = 2 * tx
                target[y, x] = max(y00 + b, floor)
                if x + 1 < width:
                    target[y, x + 1] = max(y01 + b, floor)
                if y + 1 < height:
                    target[y + 1, x] = max(y10 + b, floor)
                    if x + 1 < width:
                        target[y + 1, x + 1] = max(y11 + b, floor)


@njit(cache=True, fastmath=True, nogil=True)
def transform_output_pool(m, first, tiles_h, tiles_w, bias, use_bias, o0, o1, out):
    """out[o, first + ty, tx] = max(max of the 2x2 block of Y[o] at tile (first + ty, tx)
    + bias[o], 0) for o in [o0, o1): a ReLU and a 2x2 max-pool of stride 2 after the
    convolution, whose windows are exactly the output tiles (max and ReLU commute, and the
    bias is the same over a window). out (O, OH // 2, OW // 2); the tile columns past it
    are dropped."""
    width = out.shape[2]
    tiles = tiles_h * tiles_w
    zero = np.float32(0.0)
    for o in range(o0, o1):
        b = bias[o] if use_bias else zero
        for ty in range(tiles_h):
            target = out[o, first + ty]
            for tx in range(width):
                t = o * tiles + ty * tiles_w + tx
                s00, s10 = times_at(m[0, t], m[4, t], m[8, t], m[12, t])
                s01, s11 = times_at(m[1, t], m[5, t], m[9, t], m[13, t])
                s02, s12 = times_at(m[2, t], m[6, t], m[10, t], m[14, t])
                s03, s13 = times_at(m[3, t], m[7, t], m[11, t], m[15, t])
                y00, y01 = times_at(s00, s01, s02, s03)
                y10, y11 = times_at(s10, s11, s12, s13)
                target[tx] = max(max(max(y00, y01), max(y10, y11)) + b, zero)


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def times_at(m0, m1, m2, m3):
    """A^T (m0, m1, m2, m3) = (m0 + m1 + m2, m1 - m2 - m3)."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(cache=True, fastmath=True, nogil=True)
def tile_products(u, v, m, o0, o1, inner, tiles):
    """m[k] (rows o0..o1 of (O, tiles)) = u[k] (the same rows of (O, inner)) @ v[k] (inner,
    tiles) for the 16 positions k."""
    for k in range(16):
        gemm(NO, NO, o1 - o0, tiles, inner, 1.0, u[k][o0 * inner :], inner, v[k], tiles, 0.0,
             m[k][o0 * tiles :], tiles)  # fmt: skip


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_winograd(
    x, weight, bias, use_bias, relu, pool, pad_top, pad_left, seen, u, padded, v, m, out
):  # fmt: skip
    """out = conv(x, weight) + bias (with `relu`, max(., 0): a following ReLU layer fused in;
    with `pool`, the ReLU and a 2x2 max-pool after it, out (N, O, OH // 2, OW // 2)).

    Scratch: seen (O, C, 3, 3) and u plane_shape(O, C), see transform_weights; padded (C,
    2*TH + 2, 2*TW + 2), the image with its padding and zeros up to a whole number of tiles;
    v plane_shape(C, TH*TW); m plane_shape(O, TH*TW)."""
    tiles_h = out.shape[2] if pool else (out.shape[2] + 1) // 2
    filters = out.shape[1]
    transform_weights(weight, seen, u, 0, filters)
    padded[:] = 0.0
    for n in range(x.shape[0]):
        winograd_image(
            x[n], u, bias, use_bias, relu, pool, pad_top, pad_left, padded, v, m, 0, tiles_h, 0, filters,
            out[n],
        )  # fmt: skip


@njit(cache=True, fastmath=True, nogil=True)
def image_tiles(image, pad_top, pad_left, padded, first, last, v):
    """v = the transformed input tiles of tile rows [first, last) of `image` (transform_input),
    the image rows they read copied into `padded` first (its padding zero)."""
    channels, height, width = image.shape
    tiles_w = (padded.shape[2] - 2) // 2
    # tile row t reads padded rows 2t .. 2t + 3, padded row r holding image row r - pad_top
    top, bottom = max(0, 2 * first - pad_top), min(height, 2 * last + 2 - pad_top)
    for c in range(channels):
        for h in range(top, bottom):
            source = image[c, h]
            target = padded[c, pad_top + h, pad_left : pad_left + width]
            for w in range(width):
                target[w] = source[w]
    transform_input(padded, first, last - first, tiles_w, v)


@njit(cache=True, fastmath=True, nogil=True)
def winograd_image(
    image, u, bias, use_bias, relu, pool, pad_top, pad_left, padded, v, m, first, last, o0, o1, out
):  # fmt: skip
    """Tile rows [first, last) of output channels [o0, o1) of one image's convolution, their
    weights transformed into u and the padding of `padded` zero: the image rows these tiles
    read copied into padded, then the three steps (the last one pooling with `pool`, see
    transform_output_pool)."""
    tiles_w = (padded.shape[2] - 2) // 2
    image_tiles(image, pad_top, pad_left, padded, first, last, v)
    tile_products(u, v, m, o0, o1, image.shape[0], (last - first) * tiles_w)
    if pool:
        transform_output_pool(m, first, last - first, tiles_w, bias, use_bias, o0, o1, out)
    else:
        transform_output(m, first, last - first, tiles_w, bias, use_bias, relu, o0, o1, out)


# A part of one image takes a share of the tile rows while there are this many or more for
# each part; below, a share of the output channels, every part transforming the whole
# input (cheap for these small images). The ResNet's last stage (96 channels, 4 tile rows),
# two parts: 53 µs each by channels against 105 µs by tile rows of two, whose products of
# 8 tiles BLAS runs slowly.
MIN_TILE_ROWS_PER_PART = 4


@njit(cache=True, fastmath=True, nogil=True)
def winograd_part(
    x, weight, bias, use_bias, relu, pool, pad_top, pad_left, seen, u, tiles_padded, v, m, tile_rows, out,
    part, parts,
):  # fmt: skip
    """Part `part` of `parts` of one image's Winograd convolution (`tile_rows` rows of tiles
    computed): a share of the tile rows, or of the output channels for an image of few
    tile rows (MIN_TILE_ROWS_PER_PART). Each part transforms the weights it uses into its
    own u; tiles_padded's padding is zero (the workspace starts zeroed, and only the
    image's place in it is ever written)."""
    first, last, o0, o1 = 0, tile_rows, 0, out.shape[1]
    if tile_rows >= MIN_TILE_ROWS_PER_PART * parts:
        first, last = share(tile_rows, part, parts)
    else:
        o0, o1 = share(out.shape[1], part, parts)
    if first == last or o0 == o1:
        return
    transform_weights(weight, seen, u, o0, o1)
    winograd_image(
        x[0], u, bias, use_bias, relu, pool, pad_top, pad_left, tiles_padded, v, m, first, last, o0, o1,
        out[0],
    )  # fmt: skip


# The min_images of a layer that never goes by Winograd (not 3x3 stride 1, or too small).
NEVER = 1 << 40


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward(
    x, weight, bias, use_bias, keep, relu, sh, sw, pad_top, pad_left, min_images, padded, columns, full,
    seen, u, tiles_padded, v, m, out,
):  # fmt: skip
    """A convolution's forward pass (with `relu`, a following ReLU fused in): by Winograd
    from `min_images` images per call on (a 3x3 stride-1 layer, see Conv2D.winograd), else
    the wide im2col product (kernels/conv.py; `keep`: columns kept per image for backward).
    One kernel for both, the choice a number: a network whose shapes tip it runs the same
    compiled plan. A layer that never goes by Winograd passes min_images NEVER and empty
    Winograd scratch."""
    if x.shape[0] >= min_images:
        conv2d_forward_winograd(
            x, weight, bias, use_bias, relu, False, pad_top, pad_left, seen, u, tiles_padded, v, m, out
        )  # fmt: skip
    else:
        conv2d_forward_wide(
            x, weight, bias, use_bias, keep, relu, sh, sw, pad_top, pad_left, padded, columns, full, out
        )


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_part(
    x, weight, bias, use_bias, keep, relu, sh, sw, pad_top, pad_left, min_images, padded, columns, full,
    seen, u, tiles_padded, v, m, out, part, parts,
):  # fmt: skip
    """Part `part` of `parts` of conv2d_forward for one image: its share of the tile rows
    (or output channels) by Winograd, each part transforming the weights for itself, or of
    the output rows by the wide product when one image does not go by Winograd."""
    if min_images > 1:
        conv2d_forward_wide_part(
            x, weight, bias, use_bias, keep, relu, sh, sw, pad_top, pad_left, padded, columns, full, out,
            part, parts,
        )  # fmt: skip
        return
    winograd_part(x, weight, bias, use_bias, relu, False, pad_top, pad_left, seen, u, tiles_padded, v, m,
                  (out.shape[2] + 1) // 2, out, part, parts)  # fmt: skip


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_relu_pool(
    x, weight, bias, use_bias, sh, sw, pad_top, pad_left, min_images, padded, columns, full, seen, u,
    tiles_padded, v, m, out,
):  # fmt: skip
    """Inference of a convolution, a ReLU and a 2x2 max-pool of stride 2 into the pooled
    `out`: by Winograd from `min_images` images per call on, each pooling window being one
    output tile (transform_output_pool), else conv2d_relu_pool_wide."""
    if x.shape[0] >= min_images:
        conv2d_forward_winograd(
            x, weight, bias, use_bias, True, True, pad_top, pad_left, seen, u, tiles_padded, v, m, out
        )  # fmt: skip
    else:
        conv2d_relu_pool_wide(
            x, weight, bias, use_bias, sh, sw, pad_top, pad_left, padded, columns, full, out
        )


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_relu_pool_part(
    x, weight, bias, use_bias, sh, sw, pad_top, pad_left, min_images, padded, columns, full, seen, u,
    tiles_padded, v, m, out, part, parts,
):  # fmt: skip
    """Part `part` of `parts` of conv2d_relu_pool for one image: its share of the pooled
    rows, which are tile rows by Winograd."""
    if min_images > 1:
        conv2d_relu_pool_wide_part(
            x, weight, bias, use_bias, sh, sw, pad_top, pad_left, padded, columns, full, out, part, parts
        )  # fmt: skip
        return
    winograd_part(x, weight, bias, use_bias, True, True, pad_top, pad_left, seen, u, tiles_padded, v, m,
                  out.shape[2], out, part, parts)  # fmt: skip


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def times_a(y0, y1):
    """A (y0, y1) = (y0, y0 + y1, y0 - y1, -y1), A = (A^T)^T: a 2x2 block's gradient back
    onto the 4x4 tile of M."""
    return y0, y0 + y1, y0 - y1, -y1


@njit(cache=True, fastmath=True, nogil=True)
def transform_grad(grad, tiles_h, tiles_w, use_bias, grad_bias, dm):
    """dm[k, o*T + t] = (A dY A^T)[k] for the 2x2 block dY of grad[o] at tile t (zero past an
    odd-sized grad): the gradient of M, since Y = A^T M A. grad_bias[o] += the sum of grad[o]."""
    height, width = grad.shape[1], grad.shape[2]
    tiles = tiles_h * tiles_w
    zero = np.float32(0.0)
    for o in range(grad.shape[0]):
        plane = grad[o]
        total = zero
        for ty in range(tiles_h):
            y = 2 * ty
            below = y + 1 < height
            for tx in range(tiles_w):
                x = 2 * tx
                right = x + 1 < width
                y00 = plane[y, x]
                y01 = plane[y, x + 1] if right else zero
                y10 = plane[y + 1, x] if below else zero
                y11 = plane[y + 1, x + 1] if below and right else zero
                total += y00 + y01 + y10 + y11
                # A dY, one column at a time
                p00, p10, p20, p30 = times_a(y00, y10)
                p01, p11, p21, p31 = times_a(y01, y11)
                # (A dY) A^T, one row at a time
                t = o * tiles + ty * tiles_w + tx
                dm[0, t], dm[1, t], dm[2, t], dm[3, t] = times_a(p00, p01)
                dm[4, t], dm[5, t], dm[6, t], dm[7, t] = times_a(p10, p11)
                dm[8, t], dm[9, t], dm[10, t], dm[11, t] = times_a(p20, p21)
                dm[12, t], dm[13, t], dm[14, t], dm[15, t] = times_a(p30, p31)
        if use_bias:
            grad_bias[o] += total


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def times_gt(u0, u1, u2, u3):
    """G^T (u0, u1, u2, u3) = (u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3)."""
    half = np.float32(0.5)
    return u0 + half * (u1 + u2), half * (u1 - u2), half * (u1 + u2) + u3


@njit(cache=True, fastmath=True, nogil=True)
def untransform_weight_grad(du, grad_weight):
    """grad_weight[o, c] = G^T dU G for the 4x4 dU = du[:, o*C + c]: the gradient of the 3x3
    kernel g, since U = G g G^T."""
    channels = grad_weight.shape[1]
    taps = grad_weight.reshape((grad_weight.shape[0] * channels, 9))
    for r in range(taps.shape[0]):
        g = taps[r]
        # G^T dU, one column at a time
        q00, q10, q20 = times_gt(du[0, r], du[4, r], du[8, r], du[12, r])
        q01, q11, q21 = times_gt(du[1, r], du[5, r], du[9, r], du[13, r])
        q02, q12, q22 = times_gt(du[2, r], du[6, r], du[10, r], du[14, r])
        q03, q13, q23 = times_gt(du[3, r], du[7, r], du[11, r], du[15, r])
        # (G^T dU) G, one row at a time
        g[0], g[1], g[2] = times_gt(q00, q01, q02, q03)
        g[3], g[4], g[5] = times_gt(q10, q11, q12, q13)
        g[6], g[7], g[8] = times_gt(q20, q21, q22, q23)


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_backward_winograd(
    grad_out, x, weight, use_bias, need_grad_x, relu, activated, pad_top, pad_left, tiles_padded, v, m, du,
    grad_weight, grad_bias, dx_weights, dx_u, dx_padded, masked, grad_x,
):  # fmt: skip
    """The backward pass of a 3x3 stride-1 convolution by Winograd, image by image; with
    `relu`, grad_out is the gradient after a fused ReLU whose output was `activated`, masked
    into `masked` (O, OH, OW) first.

    - Weights: M[k] = U[k] @ V[k] gives dU[k] = dM[k] @ V[k]^T, summed over the images into
      du (plane_shape(O, C)), with dM the output gradient's tiles (transform_grad, into m)
      and V the input's (image_tiles, into v by way of tiles_padded: the forward pass's
      Winograd scratch); then dW = G^T dU G (untransform_weight_grad).
    - Input (need_grad_x): the transposed convolution, which at stride 1 is the convolution
      of the output gradient with flipped[c, o, i, j] = weight[o, c, 2 - i, 2 - j], padded by
      2 - pad on each side (at most 2 each), by Winograd (winograd_image): dx_weights[0]
      the flipped kernels, dx_weights[1] (C, O, 3, 3) and dx_u plane_shape(C, O) their
      `seen` and transform, dx_padded (O, 2*TH + 2, 2*TW + 2) for the input's tiles, and v
      and m, free once an image's weight gradient is summed, for its V and M (planes of
      at least O*TH*TW and C*TH*TW)."""
    n_images, filters, channels = grad_out.shape[0], weight.shape[0], weight.shape[1]
    tiles_h, tiles_w = (grad_out.shape[2] + 1) // 2, (grad_out.shape[3] + 1) // 2
    tiles = tiles_h * tiles_w
    if use_bias:
        grad_bias[:] = 0.0
    if n_images == 0:
        grad_weight[:] = 0.0
        return
    flipped = dx_weights[0]
    if need_grad_x:
        for c in range(channels):
            for o in range(filters):
                for i in range(3):
                    for j in range(3):
                        flipped[c, o, i, j] = weight[o, c, 2 - i, 2 - j]
        transform_weights(flipped, dx_weights[1], dx_u, 0, channels)
        dx_padded[:] = 0.0
    dx_tiles_h = (grad_x.shape[2] + 1) // 2
    no_bias = grad_weight.reshape(grad_weight.size)  # not read: use_bias False
    zero = np.float32(0.0)
    tiles_padded[:] = 0.0
    for n in range(n_images):
        if relu:
            size = masked.size
            source, mask, flat = grad_out[n].reshape(size), activated[n].reshape(size), masked.reshape(size)
            for i in range(size):
                flat[i] = source[i] if mask[i] > zero else zero
            grad = masked
        else:
            grad = grad_out[n]
        transform_grad(grad, tiles_h, tiles_w, use_bias, grad_bias, m)
        image_tiles(x[n], pad_top, pad_left, tiles_padded, 0, tiles_h, v)
        beta = 0.0 if n == 0 else 1.0
        for k in range(16):
            gemm(NO, YES, filters, channels, tiles, 1.0, m[k], tiles, v[k], tiles, beta, du[k], channels)
        if need_grad_x:
            winograd_image(grad, dx_u, no_bias, False, False, False, 2 - pad_top, 2 - pad_left, dx_padded,
                           v, m, 0, dx_tiles_h, 0, channels, grad_x[n])  # fmt: skip
    untransform_weight_grad(du, grad_weight)


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_backward(
    grad_out, x, weight, use_bias, keep, need_grad_x, relu, activated, sh, sw, pad_top, pad_left, padded,
    padded_grad, columns, full, weight_t, grad_weight, grad_bias, grad_x, min_images, tiles_padded, v, m, du,
    dx_weights, dx_u, dx_padded, masked,
):  # fmt: skip
    """A convolution's backward pass: by Winograd from `min_images` images per call on
    (conv2d_backward_winograd, for a 3x3 stride-1 layer padded by at most 2), else the wide
    im2col product (conv2d_backward_wide). A layer that never goes by Winograd passes NEVER
    and empty Winograd scratch. (30 arguments, the most a call in a compiled plan can have:
    Python compiles a call of more into one numba cannot read.)"""
    if grad_out.shape[0] >= min_images:
        conv2d_backward_winograd(
            grad_out, x, weight, use_bias, need_grad_x, relu, activated, pad_top, pad_left, tiles_padded,
            v, m, du, grad_weight, grad_bias, dx_weights, dx_u, dx_padded, masked, grad_x,
        )  # fmt: skip
    else:
        conv2d_backward_wide(
            grad_out, x, weight, use_bias, keep, need_grad_x, relu, activated, sh, sw, pad_top, pad_left,
            padded, padded_grad, columns, full, weight_t, grad_weight, grad_bias, grad_x,
        )  # fmt: skip
