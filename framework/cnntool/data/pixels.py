"""The one rule for the values of an input to a model, for `cnntool infer` and the server alike.

An input's value scale is decided by its own values (see `cnntool.data.preprocess`): integers
are pixels 0-255; floats are intensities in [0, 1] when none exceeds 1, pixels 0-255
otherwise. So values below 0 or above 255, NaN and infinities fit neither reading and are
refused, rather than predicted from numbers the model never saw (an array normalised the
torchvision way, -0.4 to 2.8, is such a case).
"""

import numpy as np

from cnntool.errors import InputError

PIXEL_MAX = 255


def check_pixel_values(array: np.ndarray, where: str) -> None:
    """Raise InputError, naming `where`, unless every value is a pixel 0-255 or a float in [0, 1]."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    low, high = array.min(), array.max()
    if low < 0 or high > PIXEL_MAX:
        raise InputError(
            f"{where}: values must be pixels 0-255 or floats in [0, 1]; found values from {low:g} to {high:g}"
        )
