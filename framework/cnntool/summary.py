"""What `inspect` shows: layers, shapes, parameter counts, FLOPs, providers, history.

Works from the spec alone (no parameters are allocated), so it can describe a spec file,
a bundle, and even a bundle whose plugin layer types are not installed.
"""

from __future__ import annotations

import math
from typing import Any

from cnntool.errors import CnntoolError

SPARK = "▁▂▃▄▅▆▇█"


def layer_rows(layers: list) -> list[dict[str, Any]]:
    """One row per planned or built layer: index, name, type, output shape, params, FLOPs."""
    rows = []
    for index, layer in enumerate(layers):
        shapes = layer.param_shapes(layer.input_shape)
        rows.append(
            {
                "index": index,
                "name": layer.name,
                "type": layer.config.type,
                "output_shape": list(layer.output_shape),
                "params": sum(math.prod(shape) for shape in shapes.values()),
                "flops": int(layer.flops(layer.input_shape)),
            }
        )
    return rows


def describe_spec(spec: Any, registry: Any = None) -> dict[str, Any]:
    """The summary of a validated spec."""
    from cnntool.registry import get_registry
    from cnntool.spec import plan_layers

    registry = registry or get_registry()
    rows = layer_rows(plan_layers(spec, registry))
    types = sorted({row["type"] for row in rows})
    return {
        "kind": "spec",
        "name": spec.name,
        "input_shape": list(spec.input_shape),
        "classes": spec.classes,
        "layers": rows,
        "total_params": sum(row["params"] for row in rows),
        "total_flops": sum(row["flops"] for row in rows),
        "providers": {name: registry.provider(name) for name in types},
        "runnable": True,
        "problems": [],
    }


def describe_bundle(raw: Any, registry: Any = None) -> dict[str, Any]:
    """The summary of a verified bundle document; if its layer types cannot be built here,
    the rows come from the stored spec and weights and `runnable` is false."""
    from cnntool.bundle import missing_layer_types
    from cnntool.registry import get_registry
    from cnntool.spec import validate_spec

    registry = registry or get_registry()
    meta = raw.meta
    providers = meta.get("providers") if isinstance(meta.get("providers"), dict) else {}
    problems = missing_layer_types(raw.spec, providers, registry)
    info: dict[str, Any] | None = None
    if not problems:
        try:
            info = describe_spec(validate_spec(raw.spec, registry), registry)
        except CnntoolError as exc:
            problems = [f"the stored spec cannot be built here: {exc}"]
    if info is None:
        info = stored_layout(raw)
    info.update(
        {
            "kind": "bundle",
            "path": str(raw.path),
            "format_version": raw.version,
            "file_bytes": raw.size,
            "digest": raw.digest,
            "providers": providers,
            "runnable": not problems,
            "problems": problems,
            "history": meta.get("history", []),
            "meta": {k: v for k, v in meta.items() if k not in ("history", "providers")},
            "total_params": sum(int(a.size) for a in raw.weights.values()),
            "resumable": bool(raw.optimizer),
        }
    )
    return info


def stored_layout(raw: Any) -> dict[str, Any]:
    """Layer rows from what the bundle stores, without the layer classes."""
    spec = raw.spec
    rows = []
    layers = spec.get("layers") if isinstance(spec.get("layers"), list) else []
    for index, layer in enumerate(layers):
        layer = layer if isinstance(layer, dict) else {}
        name = str(layer.get("name", f"layer{index}"))
        params = sum(int(a.size) for key, a in raw.weights.items() if key.rsplit(".", 1)[0] == name)
        rows.append(
            {
                "index": index,
                "name": name,
                "type": str(layer.get("type", "?")),
                "output_shape": None,
                "params": params,
                "flops": None,
            }
        )
    return {
        "name": str(spec.get("name", "?")),
        "input_shape": spec.get("input_shape"),
        "classes": spec.get("classes"),
        "layers": rows,
        "total_flops": None,
    }


def sparkline(values: list[float]) -> str:
    """A one-line picture of a series: ▁ for its minimum, █ for its maximum."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(
        SPARK[round((v - low) / span * (len(SPARK) - 1))]
        if isinstance(v, (int, float)) and math.isfinite(v)
        else " "
        for v in values
    )


def describe_file(path: Any) -> dict[str, Any]:
    """Describe a spec (JSON) or a bundle, told apart by their first byte."""
    from pathlib import Path

    from cnntool.bundle import read_bundle
    from cnntool.spec import validate_spec

    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(64).lstrip()
    except FileNotFoundError:
        raise CnntoolError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CnntoolError(f"{path}: is a folder; expected a bundle or a spec file") from None
    except OSError as exc:
        raise CnntoolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(b"{"):
        return describe_spec(validate_spec(path))
    return describe_bundle(read_bundle(path))
