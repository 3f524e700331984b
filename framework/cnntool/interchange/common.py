"""What ONNX and safetensors share: the optional libraries, reading a stranger's file within
limits, the metadata cnntool writes beside the weights, and building the imported bundle."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnntool import __version__
from cnntool.bundle import RawBundle, check_arrays, max_bundle_bytes, save_bundle
from cnntool.bundle import read_limited as read_file
from cnntool.errors import CnntoolError, InterchangeError, checked_path
from cnntool.model.network import Network
from cnntool.model.spec import validate_spec

INSTALL_HINT = "pip install 'cnntool[onnx]'"
FORMATS = {".onnx": "onnx", ".safetensors": "safetensors"}
# A file from a stranger may hold at most this many bytes (the bundle reader's limit, and
# its environment variable), and an array at most MAX_DIMS axes.
MAX_DIMS = 8
# Keys of ONNX `metadata_props` and of safetensors' `__metadata__`: JSON text where the value
# is not a plain string.
META_SPEC = "cnntool.spec"
META_CLASSES = "cnntool.classes"
META_PREPROCESSING = "cnntool.preprocessing"
META_DIGEST = "cnntool.digest"
META_VERSION = "cnntool.version"
META_PROVIDERS = "cnntool.providers"
META_CREATED = "cnntool.created_at"
META_SOURCE = "cnntool.source"


def require(module: str) -> ModuleType:
    """Import an optional library of the `onnx` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InterchangeError(
            f"this needs the {module} package ({exc}); install the extra: {INSTALL_HINT}"
        ) from None


def file_format(path: str | os.PathLike, given: str | None) -> str:
    """'onnx' or 'safetensors': `given`, else from the file's suffix."""
    if given is not None:
        if given not in FORMATS.values():
            raise InterchangeError(f"unknown format {given!r}; expected one of {', '.join(FORMATS.values())}")
        return given
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in FORMATS:
        raise InterchangeError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; name the file "
            f"{' or '.join('*' + s for s in FORMATS)}, or give --format {'|'.join(FORMATS.values())}"
        )
    return FORMATS[suffix]


def read_limited(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of a regular, non-empty file no larger than the bundle limit, checked before
    reading (the bundle reader's own check)."""

    data = read_file(path, InterchangeError, what)
    if not data:
        raise InterchangeError(f"{checked_path(path, InterchangeError)}: file is empty; expected {what}")
    return data


def check_array_size(shape: Any, itemsize: int, where: str) -> tuple[int, ...]:
    """A shape as ints, refused when it has too many axes, a negative size, or more bytes than
    a file may hold: checked with Python integers before anything is allocated."""

    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise InterchangeError(f"{where}: shape {list(dims)} is not a list of at most {MAX_DIMS} sizes >= 0")
    if math.prod(dims) * itemsize > max_bundle_bytes():
        raise InterchangeError(f"{where}: shape {list(dims)} is larger than a model file may be")
    return dims


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- what cnntool writes beside the weights --------------------------------------------------


def bundle_metadata(bundle: Any) -> dict[str, str]:
    """The spec, classes, preprocessing and provenance of a bundle, as string pairs."""

    net = bundle.network
    return {
        META_SPEC: json.dumps(net.spec_dict(), separators=(",", ":")),
        META_CLASSES: json.dumps(net.classes),
        META_PREPROCESSING: json.dumps(bundle.preprocessing),
        META_DIGEST: bundle.digest,
        META_PROVIDERS: json.dumps(bundle.providers, sort_keys=True),
        META_CREATED: str(bundle.meta.get("created_at", "")),
        META_VERSION: __version__,
        META_SOURCE: bundle.path.name,
    }


def metadata_json(metadata: dict[str, str], key: str, kind: type, where: str) -> Any:
    """A JSON value of the file's metadata, or None when absent; malformed is an error."""
    text = metadata.get(key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InterchangeError(f"{where}: metadata {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise InterchangeError(f"{where}: metadata {key!r} must be a JSON {kind.__name__}")
    return value


class Preprocessing(BaseModel):
    """How pixels become the model's input: `(pixels * pixel_scale - mean) / std`, and how an
    image of another size is fitted (cnntool.data)."""

    model_config = ConfigDict(extra="forbid")

    pixel_scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1 / 255
    mean: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    std: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    image_fit: Literal["mnist", "resize"] = "mnist"
    background: Literal["dark", "light"] | None = None


def preprocessing_from(given: Any, where: str) -> dict:
    """A validated preprocessing record from a dict, JSON text or a JSON file."""
    data = given
    if not isinstance(given, dict):
        text = str(given)
        if not text.lstrip().startswith("{"):
            text = read_limited(text, "a JSON file of preprocessing").decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InterchangeError(f"preprocessing {given!r} is not valid JSON: {exc}") from None
    try:
        return Preprocessing.model_validate(data).model_dump(exclude_none=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'preprocessing'}: {e['msg']}" for e in exc.errors()
        )
        raise InterchangeError(f"{where}: invalid preprocessing: {problems}") from None


# --- the imported bundle -----------------------------------------------------------------------


def build_network(
    spec: dict, weights: dict[str, np.ndarray], state: dict[str, np.ndarray], where: str
) -> Any:
    """Validate the spec, build its network and load the arrays, after checking that they are
    exactly what the spec builds (every mismatch named at once, as the bundle reader does)."""

    try:
        valid = validate_spec(spec)
        net = Network.build(valid, None)
    except CnntoolError as exc:
        raise InterchangeError(f"{where}: the network it describes is not valid: {exc}") from None
    raw = RawBundle(Path(where), 1, spec, weights, state, {}, {}, "", 0)
    try:
        check_arrays(
            raw,
            {key: value.shape for key, value in net.params().items()},
            {key: value.shape for key, value in net.state().items()},
        )
    except CnntoolError as exc:
        raise InterchangeError(str(exc)) from None
    net.load_arrays(weights, state)
    return net


def write_imported(net: Any, out: str | os.PathLike, meta: dict) -> Path:
    """Save an imported network through the bundle writer (atomic, with provenance)."""

    return save_bundle(net, out, meta=meta)
