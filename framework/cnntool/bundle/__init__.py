"""Model bundles: one msgpack map per file, safe to read from a stranger.

Layout (format_version 1), in this order:

    format: "cnntool.bundle"    format_version: 1
    spec:      the validated spec, every layer name explicit
    weights:   {"<layer>.<param>": {dtype, shape, data}}   (data: little-endian bytes)
    state:     the same form, for non-trained buffers
    optimizer: {} or {type, hyper, steps, slots: {slot: {key: tensor}}}
    meta:      {cnntool_version, created_at, providers, history, dataset, preprocessing, ...}
    digest:    "sha256:<hex>" over weights then state: for each key in sorted order, the key,
               dtype, shape and data; identifies the model
    checksum:  "sha256:<hex>" over the packed bytes of every entry before it; catches a
               damaged byte anywhere, meta and spec included

Reading never runs code: no pickle, no extension types, a size cap on the file, limits on
every msgpack container, nesting depth checked, a dtype whitelist, `prod(shape) * itemsize ==
len(data)` checked with Python integers before any array exists, weights matched against
the shapes the spec builds, digest and checksum verified. Anything wrong is a BundleError
that says what. Writing is atomic: temporary file in the same folder, fsync, rename.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from cnntool import __version__
from cnntool.data import DEFAULT_PREPROCESSING
from cnntool.errors import BundleError, CnntoolError, checked_path, exception_text, short_repr
from cnntool.model.network import Network
from cnntool.model.registry import DISABLE_PLUGINS_ENV, get_registry
from cnntool.model.spec import plan_layers, validate_spec

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


# --- writing -------------------------------------------------------------------------------


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


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(data)
    return checked_path(path, BundleError)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write, which becomes `path` only when the block ends without error:
    a temporary file beside `path`, fsynced, then renamed over it. The file gets the
    permissions a new file would (0666 less the umask), unlike a mkstemp file. A failure (no
    permission, disk full, an exception in the block) leaves no temporary file and `path` as
    it was; an OSError becomes a BundleError."""
    path = checked_path(path, BundleError)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BundleError(f"{path}: folder {folder} does not exist")
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise BundleError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise BundleError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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


# --- reading -------------------------------------------------------------------------------


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


def load_bundle(path: str | os.PathLike, registry: Any = None) -> Bundle:
    """Read, verify and build a bundle into a runnable network."""
    return build_bundle(read_bundle(path), registry)


def load_bundle_bytes(data: bytes, where: str = "<bytes>", registry: Any = None) -> Bundle:
    """Like load_bundle, for bytes already in memory (an upload, a test)."""
    return build_bundle(parse_bundle(data, where), registry)


def build_bundle(raw: RawBundle, registry: Any = None) -> Bundle:
    """Build a verified document into a network: layer types installed, spec valid, every
    array present with the shape the spec builds."""

    registry = registry or get_registry()
    where = str(raw.path)
    providers = raw.meta.get("providers") if isinstance(raw.meta.get("providers"), dict) else {}
    missing = missing_layer_types(raw.spec, providers, registry)
    if missing:
        raise BundleError(f"{where}: cannot build the network: " + "; ".join(missing))
    try:
        spec = validate_spec(raw.spec, registry)
    except CnntoolError as exc:
        raise BundleError(f"{where}: the stored spec is invalid: {exc}") from None

    # Shapes are checked before anything is allocated, then again on the built layers for
    # plugin layers that allocate in build() without declaring param_shapes().
    planned = plan_layers(spec, registry)
    check_arrays(raw, declared_shapes(planned, "param_shapes"), declared_shapes(planned, "state_shapes"))
    network = Network.build(spec, None, registry)
    check_arrays(
        raw,
        {key: value.shape for key, value in network.params().items()},
        {key: value.shape for key, value in network.state().items()},
    )
    network.load_arrays(raw.weights, raw.state)
    return Bundle(
        path=raw.path,
        network=network,
        spec=raw.spec,
        meta=raw.meta,
        optimizer=raw.optimizer,
        digest=raw.digest,
        weights_bytes=sum(a.nbytes for a in raw.weights.values()),
        providers={str(k): str(v) for k, v in providers.items()},
    )


def missing_layer_types(spec: dict, providers: dict, registry: Any) -> list[str]:
    """A message for each layer type of the spec that is not installed, naming its provider."""
    layers = spec.get("layers") if isinstance(spec, dict) else None
    types = (
        {layer.get("type") for layer in layers if isinstance(layer, dict)}
        if isinstance(layers, list)
        else set()
    )
    problems = []
    by_provider: dict[tuple[str, str], list[str]] = {}
    for name in sorted(t for t in types if isinstance(t, str)):
        if name in registry.types or name in registry.conflicts:
            continue
        provider = providers.get(name)
        if isinstance(provider, str) and "==" in provider:
            dist, version = provider.split("==", 1)
            by_provider.setdefault((dist, version), []).append(name)
        else:
            problems.append(
                f"layer type {name!r} is not installed and the bundle does not say which plugin provides it"
            )
    problems[:0] = [missing_distribution(names, *provider) for provider, names in sorted(by_provider.items())]
    if problems and not getattr(registry, "load_plugins", True):
        problems.append(
            f"plugins are disabled ({DISABLE_PLUGINS_ENV} is set); unset it to load installed ones"
        )
    return problems


def missing_distribution(names: list[str], dist: str, version: str) -> str:
    """Which distribution to install for layer types a bundle needs. It may be a local
    package or come from its author's own index: the same name on the public index may
    belong to someone else, so the hint does not send people there blindly."""
    kinds = (
        f"layer type {names[0]!r} is" if len(names) == 1 else f"layer types {', '.join(map(repr, names))} are"
    )
    return (
        f"{kinds} not installed; the bundle was made with distribution {dist} version {version}: install "
        f"that version from where its author publishes it (their package index: pip install --index-url "
        f"URL '{dist}=={version}'; or a local copy: pip install PATH); a package named {dist} on PyPI "
        "may belong to someone else"
    )


def declared_shapes(layers: list, method: str) -> dict[str, tuple]:
    return {
        f"{layer.name}.{key}": tuple(shape)
        for layer in layers
        for key, shape in getattr(layer, method)(layer.input_shape).items()
    }


def check_arrays(
    raw: RawBundle, expected_weights: dict[str, tuple], expected_state: dict[str, tuple]
) -> None:
    """Every parameter and buffer the spec builds is present with its shape and float32,
    and nothing else is there. All problems are reported at once."""
    problems = []
    for section, expected, found in (
        ("weights", expected_weights, raw.weights),
        ("state", expected_state, raw.state),
    ):
        for key, shape in expected.items():
            if key not in found:
                problems.append(f"{section} {key!r} is missing (expected shape {list(shape)})")
            elif found[key].shape != shape:
                problems.append(
                    f"{section} {key!r} has shape {list(found[key].shape)}, the spec builds {list(shape)}"
                )
            elif found[key].dtype.name != "float32":
                problems.append(f"{section} {key!r} has dtype {found[key].dtype.name}, expected float32")
        for key in sorted(set(found) - set(expected)):
            problems.append(f"{section} {key!r} is not a parameter of the spec's network")
    if problems:
        raise BundleError(f"{raw.path}: weights do not match the spec: " + "; ".join(problems))
