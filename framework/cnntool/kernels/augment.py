"""Augmenting a batch of images in place of the compiled step's input: each example's pixels
resampled through its own affine map (flip, rotation, shift), bilinear."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def affine_resample(images, transforms, constant, fill, out):
    """out[n, c, i, j] = bilinear sample of images[n, c] at (y, x) = centre + M_n ((i, j) - centre)
    + b_n, with transforms[n] = (M00, M01, M10, M11, b0, b1). Outside the image a sample takes the
    nearest edge pixel, or the value `fill` when `constant` is set."""
    n_images, channels, height, width = images.shape
    centre_y = (height - 1) / 2.0
    centre_x = (width - 1) / 2.0
    for n in range(n_images):
        m00, m01, m10, m11 = transforms[n, 0], transforms[n, 1], transforms[n, 2], transforms[n, 3]
        b0, b1 = transforms[n, 4], transforms[n, 5]
        source = images[n]
        target = out[n]
        for i in range(height):
            di = i - centre_y
            for j in range(width):
                dj = j - centre_x
                y = centre_y + m00 * di + m01 * dj + b0
                x = centre_x + m10 * di + m11 * dj + b1
                y0 = int(np.floor(y))
                x0 = int(np.floor(x))
                wy = y - y0
                wx = x - x0
                for c in range(channels):
                    plane = source[c]
                    total = 0.0
                    for dy in range(2):
                        weight_y = 1.0 - wy if dy == 0 else wy
                        if weight_y == 0.0:
                            continue
                        row = y0 + dy
                        for dx in range(2):
                            weight_x = 1.0 - wx if dx == 0 else wx
                            if weight_x == 0.0:
                                continue
                            col = x0 + dx
                            if 0 <= row < height and 0 <= col < width:
                                value = plane[row, col]
                            elif constant:
                                value = fill
                            else:
                                value = plane[min(max(row, 0), height - 1), min(max(col, 0), width - 1)]
                            total += weight_y * weight_x * value
                    target[c, i, j] = total
