"""The bundle format: its sections and their limits, the two shapes a bundle takes in memory
(`RawBundle`, a verified document; `Bundle`, built into a network), and the model digest that
both writing and reading compute. The layout is described in `cnntool.bundle`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnntool.data import DEFAULT_PREPROCESSING

FORMAT = "cnntool.bundle"


FORMAT_VERSION = 1


SUPPORTED_VERSIONS = (1, 1)


MAX_BUNDLE_BYTES_ENV = "CNNTOOL_MAX_BUNDLE_BYTES"


DEFAULT_MAX_BUNDLE_BYTES = 1 << 30


MAX_DEPTH = 32


MAX_DIMS = 8


TOP_KEYS = ("format", "format_version", "spec", "weights", "state", "optimizer", "meta", "digest", "checksum")


DTYPES = {
    name: np.dtype(name).newbyteorder("<") for name in ("float32", "float64", "int32", "int64", "uint8")
}


# Limits per section: JSON-like sections hold many small objects, tensor sections few large ones.
SMALL_SECTION = {"max_str_len": 1 << 20, "max_bin_len": 0, "max_array_len": 100_000, "max_map_len": 100_000}


TENSOR_SECTION = {"max_str_len": 4096, "max_array_len": MAX_DIMS, "max_map_len": 1 << 16}


SECTION_LIMITS = {
    "format": SMALL_SECTION,
    "format_version": SMALL_SECTION,
    "spec": SMALL_SECTION,
    "meta": SMALL_SECTION,
    "digest": SMALL_SECTION,
    "checksum": SMALL_SECTION,
    "weights": TENSOR_SECTION,
    "state": TENSOR_SECTION,
    "optimizer": TENSOR_SECTION,
}


MAX_SMALL_SECTION_BYTES = 16 << 20


@dataclass
class Bundle:
    """A loaded bundle: the runnable network and everything stored beside it."""

    path: Path
    network: Any
    spec: dict
    meta: dict
    optimizer: dict
    digest: str
    weights_bytes: int = 0
    providers: dict[str, str] = field(default_factory=dict)

    @property
    def history(self) -> list[dict]:
        return list(self.meta.get("history", []))

    @property
    def preprocessing(self) -> dict:

        return dict(self.meta.get("preprocessing") or DEFAULT_PREPROCESSING)


@dataclass
class RawBundle:
    """A bundle's document, checked for integrity but not yet built into a network."""

    path: Path
    version: int
    spec: dict
    weights: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    optimizer: dict
    meta: dict
    digest: str
    size: int


def model_digest(weights: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> str:
    """sha256 over weights then state, each in sorted key order: key, dtype, shape, bytes."""
    sha = hashlib.sha256()
    for section, arrays in (("weights", weights), ("state", state)):
        for key in sorted(arrays):
            array = arrays[key]
            header = f"{section}/{key}:{array.dtype.name}:{','.join(map(str, array.shape))}:"
            sha.update(header.encode())
            sha.update(np.ascontiguousarray(array.astype(DTYPES[array.dtype.name], copy=False)).data)
    return "sha256:" + sha.hexdigest()
