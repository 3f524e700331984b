"""Reading and verifying a bundle without running any code: the file's size checked before it is
read, each msgpack section decoded under its own limits, nesting depth, dtypes and shapes checked
before any array exists, then the digest and checksum. Nothing here builds a network.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from cnntool.bundle.format import (
    DEFAULT_MAX_BUNDLE_BYTES,
    DTYPES,
    FORMAT,
    MAX_BUNDLE_BYTES_ENV,
    MAX_DEPTH,
    MAX_DIMS,
    MAX_SMALL_SECTION_BYTES,
    SECTION_LIMITS,
    SMALL_SECTION,
    SUPPORTED_VERSIONS,
    TOP_KEYS,
    RawBundle,
    model_digest,
)
from cnntool.errors import BundleError, CnntoolError, checked_path, exception_text, short_repr


def max_bundle_bytes() -> int:
    raw = os.environ.get(MAX_BUNDLE_BYTES_ENV)
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise CnntoolError(f"{MAX_BUNDLE_BYTES_ENV} must be an integer, received {raw!r}") from None
    return DEFAULT_MAX_BUNDLE_BYTES


def read_bundle(path: str | os.PathLike) -> RawBundle:
    """Read and verify a bundle file without building its network (no layer code runs)."""
    data = read_limited(path, BundleError, "a bundle file", "bundle file")
    return parse_bundle(data, str(checked_path(path, BundleError)))


def read_limited(
    path: str | os.PathLike, error: type[CnntoolError], what: str, missing: str = "file"
) -> bytes:
    """The bytes of a regular file no larger than the bundle limit, checked before reading
    (a bundle, or an ONNX or safetensors file from a stranger); every failure is `error`."""
    path = checked_path(path, error)
    where = str(path)
    try:
        if path.is_dir():
            raise error(f"{where}: is a folder, not {what}")
        size = path.stat().st_size
        if not path.is_file():
            raise error(f"{where}: not a regular file")
        limit = max_bundle_bytes()
        if size > limit:
            raise error(
                f"{where}: file is {size} bytes, more than the {limit}-byte limit "
                f"(raise it with {MAX_BUNDLE_BYTES_ENV})"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{where}: {missing} not found") from None
    except IsADirectoryError:
        raise error(f"{where}: is a folder, not {what}") from None
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or exc}") from None


def parse_bundle(data: bytes, where: str = "<bytes>") -> RawBundle:
    """Verify and decode the bytes of a bundle file."""
    if len(data) == 0:
        raise BundleError(f"{where}: file is empty; expected a cnntool bundle")
    offsets = section_offsets(data, where)
    view = memoryview(data)

    def section(key: str) -> Any:
        start, end = offsets[key]
        if SECTION_LIMITS[key] is SMALL_SECTION and end - start > MAX_SMALL_SECTION_BYTES:
            raise BundleError(f"{where}: section {key!r} is {end - start} bytes, more than allowed")
        try:
            value = msgpack.unpackb(
                view[start:end],
                raw=False,
                strict_map_key=True,
                max_ext_len=0,
                **SECTION_LIMITS[key],
            )
        except Exception as exc:
            raise BundleError(f"{where}: section {key!r} is malformed: {exception_text(exc)}") from None
        check_depth(value, f"{where}: section {key!r}")
        return value

    fmt = section("format")
    if fmt != FORMAT:
        raise BundleError(f"{where}: not a cnntool bundle (format is {short_repr(fmt)}, expected {FORMAT!r})")
    version = section("format_version")
    low, high = SUPPORTED_VERSIONS
    if not isinstance(version, int) or isinstance(version, bool) or not low <= version <= high:
        raise BundleError(
            f"{where}: format_version {short_repr(version)} is not supported; this cnntool reads versions "
            f"{low} to {high} (upgrade cnntool to read newer bundles)"
        )
    checksum = section("checksum")
    body_start = offsets["_body"][0]
    body_end = offsets["_checksum_key"][0]
    actual = "sha256:" + hashlib.sha256(view[body_start:body_end]).hexdigest()
    if checksum != actual:
        raise BundleError(
            f"{where}: checksum mismatch (stored {short_repr(checksum)}, computed {actual[:19]}...): "
            "the file is damaged or was changed after it was written"
        )
    spec = section("spec")
    meta = section("meta")
    if not isinstance(spec, dict):
        raise BundleError(f"{where}: spec must be a map, found {type(spec).__name__}")
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: meta must be a map, found {type(meta).__name__}")
    weights = decode_tensors(section("weights"), f"{where}: weights")
    state = decode_tensors(section("state"), f"{where}: state")
    optimizer = decode_optimizer(section("optimizer"), f"{where}: optimizer")
    digest = section("digest")
    actual_digest = model_digest(weights, state)
    if digest != actual_digest:
        raise BundleError(
            f"{where}: digest mismatch (stored {stored_digest(digest)}, computed {actual_digest[:19]}...)"
        )
    return RawBundle(Path(where), version, spec, weights, state, optimizer, meta, digest, len(data))


def section_offsets(data: bytes, where: str) -> dict[str, tuple[int, int]]:
    """Byte ranges of each top-level value, found by skipping (no objects are built)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data), strict_map_key=True, max_ext_len=0)
    unpacker.feed(data)
    try:
        count = unpacker.read_map_header()
    except Exception as exc:
        raise BundleError(
            f"{where}: not a cnntool bundle (expected a msgpack map: {exception_text(exc)})"
        ) from None
    if count > 64:
        raise BundleError(f"{where}: top-level map has {count} entries; expected {len(TOP_KEYS)}")
    offsets: dict[str, tuple[int, int]] = {"_body": (unpacker.tell(), unpacker.tell())}
    try:
        for _ in range(count):
            key_start = unpacker.tell()
            key = unpacker.unpack()
            if not isinstance(key, str) or len(key) > 64:
                raise BundleError(
                    f"{where}: not a cnntool bundle (top-level key {short_repr(key)} is not a section name)"
                )
            start = unpacker.tell()
            unpacker.skip()
            if key == "checksum":
                offsets["_checksum_key"] = (key_start, start)
            if key in offsets:
                raise BundleError(f"{where}: section {key!r} appears twice")
            offsets[key] = (start, unpacker.tell())
    except BundleError:
        raise
    except msgpack.OutOfData:
        raise BundleError(f"{where}: file is truncated (ends in the middle of an entry)") from None
    except Exception as exc:
        raise BundleError(f"{where}: not a valid msgpack document: {exception_text(exc)}") from None
    if unpacker.tell() != len(data):
        raise BundleError(f"{where}: {len(data) - unpacker.tell()} unexpected bytes after the bundle")
    missing = [key for key in TOP_KEYS if key not in offsets]
    unknown = sorted(key for key in offsets if key not in TOP_KEYS and not key.startswith("_"))
    problems = []
    if missing:
        problems.append(f"missing sections {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown sections {', '.join(map(repr, unknown))}")
    if problems:
        if "format" in missing or "format_version" in missing:
            problems.insert(0, "not a cnntool bundle")
        raise BundleError(f"{where}: " + "; ".join(problems))
    last = max(offsets[key][1] for key in TOP_KEYS)
    if offsets["checksum"][1] != last:
        raise BundleError(f"{where}: the checksum must be the last entry")
    return offsets


def decode_tensors(value: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(value, dict):
        raise BundleError(f"{where}: expected a map of tensors, found {type(value).__name__}")
    arrays: dict[str, np.ndarray] = {}
    problems = []
    for key, record in value.items():
        try:
            arrays[key] = decode_tensor(record, f"{key!r}")
        except BundleError as exc:
            problems.append(str(exc))
    if problems:
        raise BundleError(f"{where}: " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
    return arrays


def decode_tensor(record: Any, where: str) -> np.ndarray:
    """One {dtype, shape, data} record as an array viewing the bytes (no copy)."""
    if not isinstance(record, dict) or set(record) != {"dtype", "shape", "data"}:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise BundleError(f"{where}: expected a map with keys dtype, shape, data; found {found}")
    dtype, shape, data = record["dtype"], record["shape"], record["data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise BundleError(
            f"{where}: dtype {short_repr(dtype)} is not allowed; expected one of {', '.join(DTYPES)}"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BundleError(
            f"{where}: shape {short_repr(shape)} is not a list of at most {MAX_DIMS} sizes, >= 0"
        )
    if not isinstance(data, bytes):
        raise BundleError(f"{where}: data must be binary, found {type(data).__name__}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if expected != len(data):
        raise BundleError(
            f"{where}: shape {shape} of {dtype} needs {expected} bytes but data has {len(data)}"
        )
    return np.frombuffer(data, DTYPES[dtype]).reshape(shape)


def decode_optimizer(value: Any, where: str) -> dict:
    if value == {}:
        return {}
    if not isinstance(value, dict) or set(value) != {"type", "hyper", "steps", "slots"}:
        raise BundleError(f"{where}: expected {{}} or a map with keys type, hyper, steps, slots")
    slots = value["slots"]
    if (
        not isinstance(slots, dict)
        or not isinstance(value["steps"], int)
        or not isinstance(value["hyper"], dict)
    ):
        raise BundleError(f"{where}: malformed optimizer state")
    return {
        "type": value["type"],
        "hyper": value["hyper"],
        "steps": value["steps"],
        "slots": {
            str(slot): decode_tensors(arrays, f"{where} slot {slot!r}") for slot, arrays in slots.items()
        },
    }


def check_depth(value: Any, where: str) -> None:
    """Refuse documents nested deeper than MAX_DEPTH (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BundleError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def stored_digest(value: Any) -> str:
    """A stored digest for a message: the start of the text, as the computed one is shown."""
    return f"{value[:19]}..." if isinstance(value, str) and len(value) > 19 else short_repr(value)
