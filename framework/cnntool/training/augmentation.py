"""Data augmentation for training: random shifts, crops with padding, horizontal flips and
small rotations of each training image, drawn anew every step.

The random draws for step s (counted over the whole run) come from a generator seeded with
(seed, s), in Python, before the kernel runs: the same seed gives the same augmented batches
whatever the thread count, and a resumed run draws what an uninterrupted one would. Each
image is resampled once through the composition of its transforms (kernels/augment.py):

    output pixel p  <-  input at  centre + F R(-angle) (p - centre - shift)

F the flip (x -> -x) when drawn, R the rotation, shift the translation (a crop of the image
padded by `crop_padding` pixels is a shift of up to that many pixels with the padding's
value, 0 in raw pixels, beyond the edge; plain shifts take the nearest edge pixel).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnntool.kernels.augment import affine_resample

# Keeps augmentation's generator apart from the other users of the training seed.
STREAM = 0x6175_676D


class Augmenter:
    """Applies a TrainingConfig's `augment_*` settings to batches."""

    def __init__(self, options: Any, seed: int, fill: float = 0.0) -> None:
        self.shift = int(options.augment_shift)
        self.crop_padding = int(options.augment_crop_padding)
        self.flip = bool(options.augment_flip)
        self.rotation = float(options.augment_rotation)
        self.seed = int(seed)
        self.fill = float(fill)
        self._out: dict[tuple, np.ndarray] = {}

    @property
    def active(self) -> bool:
        return bool(self.shift or self.crop_padding or self.flip or self.rotation)

    def transforms(self, n: int, step: int) -> np.ndarray:
        """The (n, 6) affine maps of step `step`: rows (M00, M01, M10, M11, b0, b1)."""
        rng = np.random.default_rng((STREAM, self.seed, step))
        shift = rng.integers(-self.shift, self.shift + 1, (n, 2)) if self.shift else np.zeros((n, 2))
        pad = self.crop_padding
        crop = rng.integers(-pad, pad + 1, (n, 2)) if pad else np.zeros((n, 2))
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        angle = np.radians(rng.uniform(-self.rotation, self.rotation, n)) if self.rotation else np.zeros(n)
        transforms = np.empty((n, 6), np.float64)
        for k in range(n):
            cos, sin = math.cos(angle[k]), math.sin(angle[k])
            sign = -1.0 if flip[k] else 1.0
            # M = F R(-angle): rows act on (row offset, column offset) from the centre.
            m00, m01, m10, m11 = cos, sin, -sign * sin, sign * cos
            ty, tx = shift[k] + crop[k]
            transforms[k] = (m00, m01, m10, m11, -(m00 * ty + m01 * tx), -(m10 * ty + m11 * tx))
        return transforms

    def __call__(self, x: np.ndarray, step: int) -> np.ndarray:
        """The augmented copy of batch `x` (N, C, H, W) for training step `step`."""
        out = self._out.get(x.shape)
        if out is None:
            out = self._out[x.shape] = np.empty_like(x)
        affine_resample(x, self.transforms(x.shape[0], step), self.crop_padding > 0, self.fill, out)
        return out
