"""The errors a user can cause. Callers catch `CnntoolError`; each subclass names a part.

Messages follow one shape: what is wrong, where (file, layer, key or plugin), what was
expected and what was found, and when there is one, the fix.
"""

import os
from pathlib import Path
from typing import Any


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


# --- values and exceptions inside messages -------------------------------------------------------


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters (ending in '...'): how a message quotes a value it
    received, so that a huge or hostile input cannot flood the terminal. Tuples show as lists,
    as JSON spelled them."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exception_text(exc: BaseException, limit: int | None = 160, *, with_type: bool = False) -> str:
    """An exception's message on one line (whitespace collapsed, cut to `limit` characters),
    its type's name if it has none. `with_type`, for a cause raised by someone else's code (a
    plugin, a library): 'ExceptionType: first line of the message'."""
    if with_type:  # someone else's message: its first line, where libraries put the point
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    else:
        text = " ".join(str(exc).split())
    text = text or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
