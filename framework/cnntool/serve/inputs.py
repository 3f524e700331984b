"""Request bodies to model input: JSON arrays, one raw image, or a multipart upload of images.

Every input is checked on its own and preprocessed on its own with the bundle's recorded
preprocessing (`cnntool.data.preprocess`), so each input's value scale is decided by its own
values, exactly as `cnntool infer` decides it for one image or one .npy file:

- all integers: pixels 0-255, scaled by the recorded `pixel_scale`;
- any number with a fraction: floats; if every value is at most 1 they are taken as
  intensities in [0, 1], otherwise as pixels 0-255.

Values below 0 or above 255, NaN and infinities are refused. Images (PNG, JPEG, anything
Pillow decodes) become model pixels as `cnntool infer` makes them from a file. Every mistake
is an `InputError` (or a subclass with its own HTTP status) whose message says what is wrong.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnntool.data import preprocess
from cnntool.data.images import read_image
from cnntool.data.pixels import check_pixel_values
from cnntool.errors import InputError

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff")
ACCEPTED_TYPES = (JSON_TYPE, *IMAGE_TYPES, MULTIPART_TYPE)


class UnsupportedMediaType(InputError):
    """The request's content type is not one the endpoint reads (HTTP 415)."""

    status = 415


class BodyTooLarge(InputError):
    """The request body is over the configured cap (HTTP 413)."""

    status = 413


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header ("image/png; x=y" -> "image/png")."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_media_type(content_type: str | None) -> str:
    kind = media_type(content_type)
    if kind not in ACCEPTED_TYPES:
        received = f"'{content_type}'" if content_type else "none"
        raise UnsupportedMediaType(
            f"unsupported content type {received}; send {JSON_TYPE} "
            '({"inputs": [...]}), an image (' + ", ".join(IMAGE_TYPES) + f") or {MULTIPART_TYPE} image files"
        )
    return kind


def json_inputs(body: bytes, input_shape: tuple[int, int, int], preprocessing: dict) -> np.ndarray:
    """Model input (N, C, H, W) float32 from a JSON body `{"inputs": [input, ...]}`."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("malformed JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise InputError(f'expected a JSON object {{"inputs": [...]}}, received a JSON {json_kind(document)}')
    unknown = sorted(set(document) - {"inputs"})
    if unknown:
        raise InputError(f'unknown field {unknown[0]!r}; the body holds only "inputs"')
    if "inputs" not in document:
        raise InputError('missing field "inputs": a list of inputs, each shaped like the model input')
    inputs = document["inputs"]
    if not isinstance(inputs, list) or not inputs:
        received = "an empty list" if inputs == [] else f"a JSON {json_kind(inputs)}"
        raise InputError(
            f'"inputs" must be a non-empty list of inputs, each of shape {shape_text(input_shape)}; '
            f"received {received}"
        )
    arrays = [pixels_array(item, f"inputs[{index}]", input_shape) for index, item in enumerate(inputs)]
    return np.concatenate([preprocess(array[np.newaxis], preprocessing) for array in arrays])


def pixels_array(value: Any, where: str, input_shape: tuple[int, int, int]) -> np.ndarray:
    """One input as (C, H, W): uint8 for integers, float32 for floats, values checked."""
    channels, height, width = input_shape
    try:
        array = np.array(value)
    except (ValueError, OverflowError):
        raise InputError(
            f"{where}: not a rectangular array of numbers; expected shape {shape_text(input_shape)}"
        ) from None
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise InputError(f"{where}: must be nested lists of numbers of shape {shape_text(input_shape)}")
    if array.shape == (height, width) and channels == 1:
        array = array[np.newaxis]
    if array.shape != (channels, height, width):
        raise InputError(f"{where}: has shape {array.shape}; expected {shape_text(input_shape)}")
    check_pixel_values(array, where)
    return array.astype(np.uint8 if array.dtype.kind in "iu" else np.float32)


def image_inputs(
    images: list[tuple[bytes, str]], input_shape: tuple[int, int, int], preprocessing: dict
) -> np.ndarray:
    """Model input (N, C, H, W) float32 from image files given as (bytes, name for errors)."""
    fit = preprocessing.get("image_fit", "mnist")
    for data, where in images:
        check_image_format(data, where)
    batch = [
        preprocess(
            read_image(io.BytesIO(data), input_shape, where, fit, preprocessing.get("background"))[
                np.newaxis
            ],
            preprocessing,
        )
        for data, where in images
    ]
    return np.concatenate(batch)


def check_image_format(data: bytes, where: str) -> None:
    """Refuse bytes Pillow cannot identify, naming what the server takes: images only (a .npy
    array, which `cnntool infer` also reads, goes as JSON here). Identifying reads the header
    only; damaged image data is left for the decoder to describe."""
    try:
        with Image.open(io.BytesIO(data)):
            pass
    except UnidentifiedImageError:
        raise InputError(
            f"{where}: not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF, ...); "
            'send arrays as JSON {"inputs": [...]}'
        ) from None
    except Exception:  # corrupt data: decoding it says what is wrong
        return


def shape_text(input_shape: tuple[int, int, int]) -> str:
    channels, height, width = input_shape
    text = str(tuple(input_shape))
    return f"{text} or {(height, width)}" if channels == 1 else text


def json_kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
