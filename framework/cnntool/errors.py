"""The errors a user can cause. Callers catch `CnntoolError`; each subclass names a part.

Messages follow one shape: what is wrong, where (file, layer, key or plugin), what was
expected and what was found, and when there is one, the fix.
"""

import os
from pathlib import Path


class CnntoolError(Exception):
    """Base class of every error a user can cause (bad spec, bundle, data, input, plugin)."""


class SpecError(CnntoolError):
    """A network spec is malformed, invalid, or its shapes do not fit together."""


class BundleError(CnntoolError):
    """A bundle file is unreadable, malformed, corrupt, or does not match its spec."""


class PluginError(CnntoolError):
    """A layer type is unknown, claimed twice, or its plugin failed to load."""


class DataError(CnntoolError):
    """A dataset is missing, unreadable, or malformed."""


class InputError(CnntoolError):
    """An input for inference (image, array, request) is unreadable or has the wrong shape."""


class InterchangeError(CnntoolError):
    """An ONNX or safetensors file cannot be written, or is unreadable, unsafe or unsupported."""


def checked_path(source: str | os.PathLike, error: type[CnntoolError]) -> Path:
    """`source` as a `Path`. A NUL byte, which no file system accepts, raises `error` naming the
    path, instead of the ValueError that `os.stat` and `open` raise for it."""
    text = os.fspath(source)
    if "\x00" in text:
        raise error(f"{text!r}: a path cannot contain a NUL byte")
    return Path(text)


class LayerError(PluginError):
    """A plugin's layer failed while a network ran (training, inference, serving): the
    message names the layer, its type and the distribution (and version) providing it."""
