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
For a single image the wide product wins, since BLAS then spreads its one large product
over the threads, which 16 small ones cannot use; `conv2d_forward_3x3` picks by batch size.
The backward pass stays with the wide im2col: the same transforms for the input gradient
(64 channels of 13x13 tiles) cost as much as they save.

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

from cnntool.kernels.blas import NO, gemm
from cnntool.kernels.conv import conv2d_forward_wide

SKEW = 16


def plane_shape(rows: int, columns: int) -> tuple[int, int]:
    """The shape of a U, V or M array holding 16 (rows, columns) matrices."""
    return (16, rows * columns + SKEW)


@njit(cache=True, fastmath=True, nogil=True)
def transform_weights(weight, u):
    """u[k, o*C + c] = (G g G^T)[k] for the 3x3 kernel g = weight[o, c]."""
    out_channels, channels = weight.shape[0], weight.shape[1]
    taps = weight.reshape((out_channels * channels, 9))
    half = np.float32(0.5)
    for r in range(out_channels * channels):
        g = taps[r]
        g00, g01, g02, g10, g11, g12, g20, g21, g22 = g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]
        # rows of G g (4 x 3)
        a00, a01, a02 = g00, g01, g02
        a10, a11, a12 = half * (g00 + g10 + g20), half * (g01 + g11 + g21), half * (g02 + g12 + g22)
        a20, a21, a22 = half * (g00 - g10 + g20), half * (g01 - g11 + g21), half * (g02 - g12 + g22)
        a30, a31, a32 = g20, g21, g22
        # (G g) G^T, row by row
        put_row(u, 0, r, a00, a01, a02)
        put_row(u, 4, r, a10, a11, a12)
        put_row(u, 8, r, a20, a21, a22)
        put_row(u, 12, r, a30, a31, a32)


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def put_row(u, k, r, a, b, c):
    """u[k : k + 4, r] = the row (a, b, c) times G^T: (a, (a+b+c)/2, (a-b+c)/2, c)."""
    half = np.float32(0.5)
    u[k, r] = a
    u[k + 1, r] = half * (a + b + c)
    u[k + 2, r] = half * (a - b + c)
    u[k + 3, r] = c


@njit(cache=True, fastmath=True, nogil=True)
def transform_input(padded, tiles_h, tiles_w, v):
    """v[k, c*T + ty*TW + tx] = (B^T d B)[k] for the 4x4 tile d of padded[c] at (2*ty, 2*tx),
    T = TH*TW."""
    tiles = tiles_h * tiles_w
    for c in range(padded.shape[0]):
        plane = padded[c]
        for ty in range(tiles_h):
            r0, r1, r2, r3 = plane[2 * ty], plane[2 * ty + 1], plane[2 * ty + 2], plane[2 * ty + 3]
            base = c * tiles + ty * tiles_w
            for tx in range(tiles_w):
                x = 2 * tx
                a0, a1, a2, a3 = r0[x], r0[x + 1], r0[x + 2], r0[x + 3]
                b0, b1, b2, b3 = r1[x], r1[x + 1], r1[x + 2], r1[x + 3]
                c0, c1, c2, c3 = r2[x], r2[x + 1], r2[x + 2], r2[x + 3]
                e0, e1, e2, e3 = r3[x], r3[x + 1], r3[x + 2], r3[x + 3]
                # B^T d, column by column: (d0 - d2, d1 + d2, d2 - d1, d1 - d3) of the rows
                t00, t01, t02, t03 = a0 - c0, a1 - c1, a2 - c2, a3 - c3
                t10, t11, t12, t13 = b0 + c0, b1 + c1, b2 + c2, b3 + c3
                t20, t21, t22, t23 = c0 - b0, c1 - b1, c2 - b2, c3 - b3
                t30, t31, t32, t33 = b0 - e0, b1 - e1, b2 - e2, b3 - e3
                # (B^T d) B, row by row, the same combinations
                t = base + tx
                v[0, t] = t00 - t02
                v[1, t] = t01 + t02
                v[2, t] = t02 - t01
                v[3, t] = t01 - t03
                v[4, t] = t10 - t12
                v[5, t] = t11 + t12
                v[6, t] = t12 - t11
                v[7, t] = t11 - t13
                v[8, t] = t20 - t22
                v[9, t] = t21 + t22
                v[10, t] = t22 - t21
                v[11, t] = t21 - t23
                v[12, t] = t30 - t32
                v[13, t] = t31 + t32
                v[14, t] = t32 - t31
                v[15, t] = t31 - t33


@njit(cache=True, fastmath=True, nogil=True)
def transform_output(m, tiles_h, tiles_w, bias, use_bias, relu, out):
    """out[o] = Y[o] + bias[o] (max(., 0) with `relu`), where the 2x2 block of Y at tile t is
    A^T m[:, o*T + t] A; the parts of the last blocks beyond an odd-sized `out` are dropped."""
    out_channels, height, width = out.shape
    tiles = tiles_h * tiles_w
    floor = np.float32(0.0) if relu else np.float32(-np.inf)
    for o in range(out_channels):
        b = bias[o] if use_bias else np.float32(0.0)
        target = out[o]
        for ty in range(tiles_h):
            y = 2 * ty
            for tx in range(tiles_w):
                t = o * tiles + ty * tiles_w + tx
                # A^T m: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3 (rows of the 4x4 m)
                s00 = m[0, t] + m[4, t] + m[8, t]
                s01 = m[1, t] + m[5, t] + m[9, t]
                s02 = m[2, t] + m[6, t] + m[10, t]
                s03 = m[3, t] + m[7, t] + m[11, t]
                s10 = m[4, t] - m[8, t] - m[12, t]
                s11 = m[5, t] - m[9, t] - m[13, t]
                s12 = m[6, t] - m[10, t] - m[14, t]
                s13 = m[7, t] - m[11, t] - m[15, t]
                # (A^T m) A: column 0 = s0 + s1 + s2, column 1 = s1 - s2 - s3
                x = 2 * tx
                target[y, x] = max(s00 + s01 + s02 + b, floor)
                if x + 1 < width:
                    target[y, x + 1] = max(s01 - s02 - s03 + b, floor)
                if y + 1 < height:
                    target[y + 1, x] = max(s10 + s11 + s12 + b, floor)
                    if x + 1 < width:
                        target[y + 1, x + 1] = max(s11 - s12 - s13 + b, floor)


@njit(cache=True, fastmath=True, nogil=True)
def tile_products(u, v, m, rows, inner, tiles):
    """m[k] (rows, tiles) = u[k] (rows, inner) @ v[k] (inner, tiles) for the 16 positions k."""
    for k in range(16):
        gemm(NO, NO, rows, tiles, inner, 1.0, u[k], inner, v[k], tiles, 0.0, m[k], tiles)


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_winograd(x, weight, bias, use_bias, relu, pad_top, pad_left, u, padded, v, m, out):
    """out = conv(x, weight) + bias (with `relu`, max(., 0): a following ReLU layer fused in).

    Scratch: u plane_shape(O, C); padded (C, 2*TH + 2, 2*TW + 2), the image with its padding
    and zeros up to a whole number of tiles; v plane_shape(C, TH*TW); m plane_shape(O, TH*TW)."""
    n_images, channels, height, width = x.shape
    out_channels, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    tiles_h, tiles_w = (oh + 1) // 2, (ow + 1) // 2
    transform_weights(weight, u)
    padded[:] = 0.0
    for n in range(n_images):
        for c in range(channels):
            for h in range(height):
                source = x[n, c, h]
                target = padded[c, pad_top + h, pad_left : pad_left + width]
                for w in range(width):
                    target[w] = source[w]
        transform_input(padded, tiles_h, tiles_w, v)
        tile_products(u, v, m, out_channels, channels, tiles_h * tiles_w)
        transform_output(m, tiles_h, tiles_w, bias, use_bias, relu, out[n])


# From this many images per call on, the Winograd forward beats the wide product.
WINOGRAD_MIN_IMAGES = 2


@njit(cache=True, fastmath=True, nogil=True)
def conv2d_forward_3x3(
    x, weight, bias, use_bias, relu, pad_top, pad_left, padded, columns, full, u, tiles_padded, v, m, out
):  # fmt: skip
    """A large 3x3 stride-1 convolution's forward pass: Winograd for a batch, the wide
    im2col product (one large matrix product, threaded by BLAS) for a single image."""
    if x.shape[0] >= WINOGRAD_MIN_IMAGES:
        conv2d_forward_winograd(
            x, weight, bias, use_bias, relu, pad_top, pad_left, u, tiles_padded, v, m, out
        )
    else:
        conv2d_forward_wide(
            x, weight, bias, use_bias, False, relu, pad_top, pad_left, padded, columns, full, out
        )
