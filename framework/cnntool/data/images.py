"""Inputs for inference: image files (PNG, JPEG, anything Pillow opens) and .npy arrays.

An image is turned into what the model takes, `(C, H, W)` uint8, by the same fitting at
every size. A grayscale model trained on digit-like data (`fit="mnist"`) gets it the way
MNIST digits were made: light ink on a dark background (inverted if the background is light,
the contrast stretched), cropped to the ink, scaled so its longer side fills 20/28 of the
frame, and placed so its centre of mass sits at the centre; an image of the model's size
whose ink is already framed that way keeps its framing. Other models get a plain resize (an
image of their size is used pixel for pixel).

Transparency is composited onto the background the model was trained on (`background`:
"dark" or "light", recorded in the bundle's preprocessing; by default dark for `mnist`, light
otherwise), unless the opaque content has that tone itself and would vanish: then onto the
other one. A white digit on a transparent canvas thus stays a white digit.

Every failure is an `InputError` that names the file: missing, unreadable, corrupt,
truncated, too large to decode safely (Pillow's decompression-bomb limit), or of the wrong
shape.
"""

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from cnntool.data.npz import read_npy
from cnntool.data.pixels import check_pixel_values
from cnntool.errors import InputError, checked_path

NPY_MAGIC = b"\x93NUMPY"
# MNIST fits each digit in a 20x20 box inside its 28x28 frame.
DIGIT_BOX_FRACTION = 20 / 28
# Below this contrast between ink and background the image counts as blank.
MIN_CONTRAST = 32
# After stretching the contrast to 0-255, ink is what is brighter than this.
INK_THRESHOLD = 64


# How an image of another size than the model's is fitted to it: "mnist" (grayscale models
# trained on digit-like data: invert, crop, centre by mass) or "resize" (a plain resize,
# for models trained on a folder of pictures). A bundle records it as preprocessing's
# `image_fit`.
IMAGE_FITS = ("mnist", "resize")
BACKGROUNDS = ("dark", "light")
# An image of the model's size counts as framed MNIST-style when its ink fits the digit box
# (this many pixels of slack) and its centre of mass lies this close to the frame's centre.
FRAMED_SLACK = 1
FRAMED_CENTRE = 1.5


def default_background(fit: str) -> str:
    """The background assumed when a bundle does not record one: MNIST-style models were
    trained on light ink on black, others most likely on photos on a light ground."""
    return "dark" if fit == "mnist" else "light"


def load_input_file(
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    fit: str = "mnist",
    background: str | None = None,
) -> np.ndarray:
    """A batch `(N, C, H, W)` from an image (N = 1) or a .npy array; uint8 or float32."""
    path = Path(path)
    with _open(path) as file:
        is_npy = file.read(len(NPY_MAGIC)) == NPY_MAGIC
    if is_npy or path.suffix.lower() == ".npy":
        return _load_npy(path, input_shape)
    return load_image(path, input_shape, fit, background)[np.newaxis]


def load_image(
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    fit: str = "mnist",
    background: str | None = None,
) -> np.ndarray:
    """The image at `path` as model input pixels, `(C, H, W)` uint8, for C of 1 or 3."""
    path = Path(path)
    _check_channels(path, input_shape)
    with _open(path) as file:
        return read_image(file, input_shape, str(path), fit, background)


def read_image(
    file: BinaryIO,
    input_shape: tuple[int, int, int],
    where: str,
    fit: str = "mnist",
    background: str | None = None,
) -> np.ndarray:
    """Like `load_image`, from an open binary file (an upload, a BytesIO); errors name `where`."""
    _check_channels(where, input_shape)
    channels, height, width = input_shape
    background = background if background in BACKGROUNDS else default_background(fit)
    image = decode_image(file, where, "L" if channels == 1 else "RGB", background)
    if image.size == (1, 1) and (width, height) != (1, 1):
        warnings.warn(
            f"{where}: a 1x1 image holds no picture; the model sees one uniform {width}x{height} frame",
            stacklevel=2,
        )
    if channels == 1 and fit == "mnist":
        pixels = _mnist_style(np.asarray(image), height, width)
    elif image.size == (width, height):
        pixels = np.asarray(image)
    else:
        pixels = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
    if channels == 1:
        return np.ascontiguousarray(pixels[np.newaxis])
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _check_channels(where: str | os.PathLike, input_shape: tuple[int, int, int]) -> None:
    channels = input_shape[0]
    if channels not in (1, 3):
        raise InputError(
            f"{where}: the model takes {channels} channels, which no image file provides; "
            f"pass a .npy array of shape {tuple(input_shape)}"
        )


def _open(path: Path):
    path = checked_path(path, InputError)
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; expected an image or a .npy file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def decode_image(file: BinaryIO, where: str, mode: str, background: str = "light") -> Image.Image:
    """Decode fully and convert to `mode` ("L" or "RGB"), compositing transparency onto a
    `background` ("dark" or "light"; the other one when the content has that tone)."""
    try:
        with Image.open(file) as image:
            pixels = image.width * image.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(
                    f"{pixels} pixels exceeds the limit of {Image.MAX_IMAGE_PIXELS}"
                )
            image.load()
            return _convert(ImageOps.exif_transpose(image), mode, background)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{where}: image too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{where}: not an image Pillow can read (PNG, JPEG, ...) nor a .npy array") from None
    # Pillow's format decoders fail on corrupt data with many exception types
    # (OSError for truncation, SyntaxError, ValueError, struct.error, ...).
    except Exception as exc:
        raise InputError(f"{where}: corrupt or truncated image ({exc})") from exc


def _convert(image: Image.Image, mode: str, background: str = "light") -> Image.Image:
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, _backdrop(rgba, background)), rgba)
    elif image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # Pillow clips 16-bit and float values when converting to 8 bits; scale instead.
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image.convert(mode)


def _backdrop(rgba: Image.Image, background: str) -> str:
    """The colour to composite onto: `background`, unless the opaque content is of its tone
    (light ink on a model trained on light backgrounds, say), which would then vanish."""
    pixels = np.asarray(rgba, dtype=np.float64)
    alpha = pixels[..., 3] / 255
    if alpha.sum() == 0:
        return "white" if background == "light" else "black"
    luma = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    content_is_light = (luma * alpha).sum() / alpha.sum() > 127.5
    light = background == "light"
    if content_is_light == light and alpha.min() < 0.5:
        light = not light
    return "white" if light else "black"


def _mnist_style(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Light-on-dark, cropped to the ink, scaled into the digit box, centred by mass; an
    image of the frame's size whose ink is already framed so keeps its framing."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    if np.median(border) > 127:
        pixels = 255 - pixels
        border = 255 - border
    background, peak = float(np.median(border)), float(pixels.max())
    if peak - background < MIN_CONTRAST:
        return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))
    stretched = np.clip((pixels - background) * (255 / (peak - background)), 0, 255)
    stretched = stretched.astype(np.uint8)
    ink = stretched > INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = stretched[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    box = max(1, round(DIGIT_BOX_FRACTION * min(height, width)))
    if stretched.shape == (height, width) and _framed(stretched, ink, box):
        return stretched
    scale = box / max(crop.shape)
    digit_height = max(1, round(crop.shape[0] * scale))
    digit_width = max(1, round(crop.shape[1] * scale))
    digit = np.asarray(Image.fromarray(crop).resize((digit_width, digit_height), Image.Resampling.LANCZOS))

    # Place the digit so its centre of mass lands on the frame's centre, (size - 1) / 2,
    # without pushing any of it out of the frame.
    mass = digit.astype(np.float64)
    total = mass.sum()
    centre_row = (mass.sum(axis=1) @ np.arange(digit_height)) / total
    centre_col = (mass.sum(axis=0) @ np.arange(digit_width)) / total
    top = min(max(round((height - 1) / 2 - centre_row), 0), height - digit_height)
    left = min(max(round((width - 1) / 2 - centre_col), 0), width - digit_width)
    canvas = np.zeros((height, width), dtype=np.uint8)
    canvas[top : top + digit_height, left : left + digit_width] = digit
    return canvas


def _framed(pixels: np.ndarray, ink: np.ndarray, box: int) -> bool:
    """Whether the ink fits the digit box and its centre of mass is at the frame's centre."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 > box + FRAMED_SLACK:
        return False
    mass = pixels.astype(np.float64)
    total = mass.sum()
    centre_row = (mass.sum(axis=1) @ np.arange(pixels.shape[0])) / total
    centre_col = (mass.sum(axis=0) @ np.arange(pixels.shape[1])) / total
    middle_row, middle_col = (pixels.shape[0] - 1) / 2, (pixels.shape[1] - 1) / 2
    return abs(centre_row - middle_row) <= FRAMED_CENTRE and abs(centre_col - middle_col) <= FRAMED_CENTRE


def _load_npy(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A batch from a .npy of shape (C, H, W), (N, C, H, W), or for C = 1 (H, W), (N, H, W)."""
    with _open(path) as file:
        try:
            array = read_npy(file, os.fstat(file.fileno()).st_size)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: not a valid .npy array: {exc}") from exc
    return input_batch(array, input_shape, str(path))


def input_batch(array: np.ndarray, input_shape: tuple[int, int, int], where: str) -> np.ndarray:
    """A batch `(N, C, H, W)`, uint8 or float32, from an array of shape (C, H, W) or
    (N, C, H, W), or for C = 1 (H, W) or (N, H, W), its values checked; errors name `where`."""
    channels, height, width = input_shape
    if array.shape == (channels, height, width) or (channels == 1 and array.shape == (height, width)):
        batch = array.reshape(1, channels, height, width)
    elif array.ndim == 4 and array.shape[1:] == (channels, height, width):
        batch = array
    elif channels == 1 and array.ndim == 3 and array.shape[1:] == (height, width):
        batch = array[:, np.newaxis]
    else:
        accepted = [f"{(channels, height, width)}", f"(N, {channels}, {height}, {width})"]
        if channels == 1:
            accepted += [f"{(height, width)}", f"(N, {height}, {width})"]
        raise InputError(f"{where}: array has shape {array.shape}; expected {' or '.join(accepted)}")
    if len(batch) == 0:
        raise InputError(f"{where}: array holds no inputs (shape {array.shape})")
    if batch.dtype == np.uint8:
        return np.ascontiguousarray(batch)
    if batch.dtype.kind in "iu":
        low, high = int(batch.min()), int(batch.max())
        if low < 0 or high > 255:
            raise InputError(f"{where}: integer pixels must lie in 0-255; found values {low} to {high}")
        return np.ascontiguousarray(batch, dtype=np.uint8)
    if batch.dtype.kind == "f":
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        check_pixel_values(batch, where)
        return batch
    raise InputError(f"{where}: array has dtype {batch.dtype}; expected uint8, integers or floats")
