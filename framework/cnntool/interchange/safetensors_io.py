"""Weights as safetensors, the format weights travel in between frameworks.

Out: every parameter and state array under its `<layer>.<param>` key, float32, with the spec,
classes, preprocessing and provenance as JSON text in `__metadata__` (common.META_*).

In: a spec (given, or the one in the metadata) and the file's arrays. When every key the spec
builds is in the file, arrays are matched by name. Otherwise the names are another framework's
(a PyTorch `state_dict`: `features.0.weight`, `bn1.running_mean`, `num_batches_tracked`) and
arrays are matched by order and shape: the file's tensors are grouped by module (the key up
to its last dot) in natural order (`features.2` before `features.10`), and each cnntool layer
with parameters takes the first unused module holding exactly its parameter names with its
shapes. safetensors keeps no insertion order, so order alone cannot be trusted; the shapes
settle it, and the mapping used is reported.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from cnntool.bundle import model_digest
from cnntool.errors import CnntoolError, InterchangeError, checked_path, exception_text
from cnntool.interchange.common import (
    META_CLASSES,
    META_PREPROCESSING,
    META_SPEC,
    build_network,
    bundle_metadata,
    check_array_size,
    metadata_json,
    preprocessing_from,
    read_limited,
    require,
    sha256_of,
    write_imported,
)
from cnntool.model.spec import plan_layers, read_spec_data, validate_spec
from cnntool.system.files import atomic_write

# Dtypes read as float32 weights; integer buffers such as PyTorch's `num_batches_tracked`
# (which cnntool has no use for) are skipped.
FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}
SKIPPED_SUFFIXES = ("num_batches_tracked",)


def export_safetensors(bundle: Any, out: str | os.PathLike) -> dict:
    """Write a loaded bundle's weights and state to `out` as safetensors."""

    numpy_io = require("safetensors.numpy")
    net = bundle.network
    arrays = {
        key: np.ascontiguousarray(value, np.float32) for key, value in {**net.params(), **net.state()}.items()
    }
    data = numpy_io.save(arrays, metadata={"format": "cnntool", **bundle_metadata(bundle)})
    path = atomic_write(out, data)
    return {"path": str(path), "format": "safetensors", "bytes": len(data), "tensors": len(arrays),
            "digest": bundle.digest}  # fmt: skip


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str], list[str], str]:
    """The float arrays of a safetensors file (as float32), its metadata, the keys skipped and
    the file's sha256. Sizes and dtypes are checked from the header before any array is read."""
    safetensors = require("safetensors")
    path = checked_path(path, InterchangeError)
    sha256 = sha256_of(read_limited(path, "a safetensors file"))
    where = str(path)
    arrays: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    problems: list[str] = []
    try:
        with safetensors.safe_open(where, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                piece = handle.get_slice(key)
                dtype = piece.get_dtype()
                check_array_size(piece.get_shape(), ITEMSIZE.get(dtype, 8), f"{where}: tensor {key!r}")
                if dtype not in FLOAT_DTYPES:
                    if key.rsplit(".", 1)[-1] in SKIPPED_SUFFIXES:
                        skipped.append(key)
                    else:
                        problems.append(f"tensor {key!r} has dtype {dtype}; weights must be F32, F16 or F64")
                    continue
                arrays[key] = np.ascontiguousarray(handle.get_tensor(key), np.float32)
    except CnntoolError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the library's errors, and a panic of its Rust code
        raise InterchangeError(f"{where}: not a valid safetensors file: {exception_text(exc)}") from None
    if problems:
        raise InterchangeError(f"{where}: " + "; ".join(problems))
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InterchangeError(f"{where}: __metadata__ must map strings to strings")
    return arrays, metadata, skipped, sha256


def import_safetensors(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    spec: Any = None,
    classes: list[str] | None = None,
    preprocessing: Any = None,
) -> dict:
    """Build a bundle from a spec and a safetensors file of its weights; write it to `out`."""

    where = str(path)
    arrays, metadata, skipped, sha256 = read_safetensors(path)
    if spec is None:
        spec_data = metadata_json(metadata, META_SPEC, dict, where)
        if spec_data is None:
            raise InterchangeError(
                f"{where}: the file holds weights only (no cnntool spec in its metadata); give the "
                "network they belong to with --spec SPEC"
            )
    else:
        spec_data = dict(read_spec_data(spec))
    if classes is None and "classes" not in spec_data:
        classes = metadata_json(metadata, META_CLASSES, list, where)
    if classes is not None:
        spec_data["classes"] = classes
    try:
        valid = validate_spec(spec_data)
    except CnntoolError as exc:
        if spec is not None:
            raise
        raise InterchangeError(f"{where}: the spec in its metadata is not valid: {exc}") from None
    layers = plan_layers(valid)
    sections = {"params": "param_shapes", "state": "state_shapes"}
    expected = {
        f"{layer.name}.{key}": (section, tuple(shape))
        for layer in layers
        for section, method in sections.items()
        for key, shape in getattr(layer, method)(layer.input_shape).items()
    }
    if set(expected) <= set(arrays):
        matched_by = "name"
        mapping = {key: key for key in expected}
        problems = [
            f"{key!r}: the spec builds {list(shape)}, the file has {list(arrays[key].shape)}"
            for key, (_, shape) in expected.items()
            if arrays[key].shape != shape
        ]
        extra = sorted(set(arrays) - set(expected))
        if extra:
            problems.append(f"the spec has no parameter for {', '.join(map(repr, extra))}")
        if problems:
            raise InterchangeError(f"{where}: weights do not match the spec: " + "; ".join(problems))
    else:
        matched_by = "order and shape"
        mapping = match_by_order(layers, arrays, where)
    found: dict[str, dict[str, np.ndarray]] = {"params": {}, "state": {}}
    for key, (section, _) in expected.items():
        found[section][key] = arrays[mapping[key]]
    net = build_network(
        valid.model_dump(mode="json", exclude_none=True), found["params"], found["state"], where
    )
    if preprocessing is None:
        preprocessing = metadata_json(metadata, META_PREPROCESSING, dict, where)
    record = preprocessing_from(preprocessing or {}, where)
    meta = {
        "preprocessing": record,
        "imported_from": {"file": os.path.basename(where), "format": "safetensors", "sha256": sha256,
                          "matched_by": matched_by},
    }  # fmt: skip
    bundle_path = write_imported(net, out, meta)

    return {
        "path": str(bundle_path),
        "source": where,
        "format": "safetensors",
        "matched_by": matched_by,
        "mapping": mapping,
        "skipped": skipped,
        "layers": len(layers),
        "digest": model_digest(net.params(), net.state()),
    }


def natural_key(text: str) -> list[Any]:
    """'features.10' after 'features.2': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def match_by_order(layers: list, arrays: dict[str, np.ndarray], where: str) -> dict[str, str]:
    """cnntool key -> file key, for files named by another framework (see the module docs)."""
    modules: dict[str, dict[str, str]] = {}
    for key in arrays:
        module, _, name = key.rpartition(".")
        modules.setdefault(module, {})[name] = key
    order = sorted(modules, key=natural_key)
    used: set[str] = set()
    mapping: dict[str, str] = {}
    for layer in layers:
        wanted = {**layer.param_shapes(layer.input_shape), **layer.state_shapes(layer.input_shape)}
        if not wanted:
            continue
        candidates = [m for m in order if m not in used]
        found = next(
            (
                m
                for m in candidates
                if set(modules[m]) == set(wanted)
                and all(arrays[modules[m][name]].shape == tuple(shape) for name, shape in wanted.items())
            ),
            None,
        )
        if found is None:
            raise InterchangeError(f"{where}: {mismatch(layer, wanted, candidates, modules, arrays)}")
        used.add(found)
        for name in wanted:
            mapping[f"{layer.name}.{name}"] = modules[found][name]
    left = [modules[m][name] for m in order if m not in used for name in sorted(modules[m])]
    if left:
        raise InterchangeError(
            f"{where}: the spec has no parameter for {', '.join(map(repr, left[:10]))}"
            + (f" and {len(left) - 10} more" if len(left) > 10 else "")
            + "; is it the spec of another network?"
        )
    return mapping


def mismatch(layer: Any, wanted: dict, candidates: list[str], modules: dict, arrays: dict) -> str:
    """Why no module of the file fits a layer: the next one in order, key by key."""
    names = ", ".join(f"{layer.name}.{name} {list(shape)}" for name, shape in wanted.items())
    head = f"no tensors in the file fit layer {layer.name!r} ({layer.config.type}: {names})"
    if not candidates:
        return head + "; every tensor of the file is already used by an earlier layer"
    module = candidates[0]
    details = []
    for name, shape in wanted.items():
        key = modules[module].get(name)
        if key is None:
            details.append(f"{layer.name}.{name} {list(shape)} has no {module}.{name}")
        elif arrays[key].shape != tuple(shape):
            details.append(f"{layer.name}.{name} is {list(shape)} but {key!r} is {list(arrays[key].shape)}")
    extra = sorted(set(modules[module]) - set(wanted))
    if extra:
        details.append(f"{module!r} also holds {', '.join(extra)}")
    return head + f"; the next in order, {module!r}: " + "; ".join(details)
