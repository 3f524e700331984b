"""Writing a bundle: a network's spec, weights, state, optimizer and provenance packed in the
format's order, its digest and checksum computed, and the file written atomically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from cnntool import __version__
from cnntool.bundle.format import DTYPES, FORMAT, FORMAT_VERSION, MAX_DEPTH, model_digest
from cnntool.errors import CnntoolError
from cnntool.model.registry import get_registry
from cnntool.system.files import atomic_write


def save_bundle(net: Any, path: str | os.PathLike, meta: dict | None = None, optimizer: Any = None) -> Path:
    """Write `net` (and optionally an optimizer's state, for resuming) to one bundle file,
    atomically. `meta` adds to the provenance cnntool records itself."""

    registry = get_registry()
    types = sorted({layer.config.type for layer in net.layers})
    full_meta = {
        "cnntool_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "providers": {name: registry.provider(name) for name in types},
    }
    full_meta.update(plain(meta or {}, "meta"))
    weights = {key: tensor_record(value) for key, value in sorted(net.params().items())}
    state = {key: tensor_record(value) for key, value in sorted(net.state().items())}
    opt_state = optimizer_record(optimizer.state_dict()) if optimizer is not None else {}
    entries = [
        ("format", FORMAT),
        ("format_version", FORMAT_VERSION),
        ("spec", net.spec_dict()),
        ("weights", weights),
        ("state", state),
        ("optimizer", opt_state),
        ("meta", full_meta),
        ("digest", model_digest(net.params(), net.state())),
    ]
    packer = msgpack.Packer(use_bin_type=True)
    body = b"".join(packer.pack(key) + packer.pack(value) for key, value in entries)
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    data = packer.pack_map_header(len(entries) + 1) + body + packer.pack("checksum") + packer.pack(checksum)
    return atomic_write(path, data)


def tensor_record(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    name = array.dtype.name
    if name not in DTYPES:
        raise CnntoolError(f"cannot store dtype {name} in a bundle; supported: {', '.join(DTYPES)}")
    return {
        "dtype": name,
        "shape": list(array.shape),
        "data": array.astype(DTYPES[name], copy=False).tobytes(),
    }


def optimizer_record(state: dict) -> dict:
    return {
        "type": state["type"],
        "hyper": plain(state["hyper"], "optimizer"),
        "steps": int(state["steps"]),
        "slots": {
            slot: {key: tensor_record(value) for key, value in sorted(arrays.items())}
            for slot, arrays in state["slots"].items()
        },
    }


def plain(value: Any, where: str, depth: int = 0) -> Any:
    """JSON-safe copy of metadata: dicts with str keys, lists, str, int, float, bool, None."""
    if depth > MAX_DEPTH:
        raise CnntoolError(f"{where}: nested more than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, where, depth + 1) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), where, depth + 1)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise CnntoolError(f"{where}: cannot store a {type(value).__name__} in bundle metadata")
