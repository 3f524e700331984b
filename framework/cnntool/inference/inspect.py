"""What `inspect` shows: layers, shapes, parameter counts, FLOPs, providers, history.

Works from the spec alone (no parameters are allocated), so it can describe a spec file,
a bundle, and even a bundle whose plugin layer types are not installed.
"""

from __future__ import annotations

import math
from typing import Any

from cnntool.bundle import missing_layer_types, read_bundle
from cnntool.compile.plan import activation_memory as planned
from cnntool.compile.plan import fusable
from cnntool.errors import CnntoolError
from cnntool.model.execution import describe_execution
from cnntool.model.network import Network
from cnntool.model.registry import get_registry
from cnntool.model.spec import INPUT, hyperparameters, is_spec_file, layer_rows, plan_layers, validate_spec

SPARK = "▁▂▃▄▅▆▇█"


def activation_memory(spec: Any, layers: list, registry: Any) -> dict[str, Any]:
    """Bytes of activations per example: compiled, an inference pass shares buffers whose
    last reader has run (cnntool.compile.plan), while training keeps all for the backward pass; run
    layer by layer, every layer keeps its own output either way."""
    if fusable(layers):
        return {"compiled": True, **planned(Network.build(spec, None, registry))}
    kept = 4 * sum(math.prod(layer.output_shape) for layer in layers)
    return {"compiled": False, "inference": kept, "training": kept}


def spec_summary(spec: Any, registry: Any = None) -> dict[str, Any]:
    """The summary of a validated spec."""
    registry = registry or get_registry()
    layers = plan_layers(spec, registry)
    rows = layer_rows(layers)
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
        "activation_memory": activation_memory(spec, layers, registry),
        "execution": describe_execution(layers, registry),
        "runnable": True,
        "problems": [],
    }


def bundle_summary(raw: Any, registry: Any = None) -> dict[str, Any]:
    """The summary of a verified bundle document; if its layer types cannot be built here,
    the rows come from the stored spec and weights and `runnable` is false."""
    registry = registry or get_registry()
    meta = raw.meta
    providers = meta.get("providers") if isinstance(meta.get("providers"), dict) else {}
    problems = missing_layer_types(raw.spec, providers, registry)
    info: dict[str, Any] | None = None
    if not problems:
        try:
            info = spec_summary(validate_spec(raw.spec, registry), registry)
        except CnntoolError as exc:
            problems = [f"the stored spec cannot be built here: {exc}"]
    if info is None:
        info = stored_layout(raw, registry)
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


def stored_layout(raw: Any, registry: Any) -> dict[str, Any]:
    """Layer rows from what a bundle stores, for a spec that cannot be built here: each
    layer's stored hyperparameters and weight shapes, and output shapes and FLOPs as far as
    the installed layer types reach (up to the first one that is missing)."""
    spec = raw.spec
    layers = spec.get("layers") if isinstance(spec.get("layers"), list) else []
    shapes: dict[str, Any] = {INPUT: stored_input_shape(spec.get("input_shape"))}
    previous = INPUT
    rows = []
    for index, layer in enumerate(layers):
        layer = layer if isinstance(layer, dict) else {}
        name = str(layer.get("name", f"layer{index}"))
        inputs = listed if isinstance(listed := layer.get("inputs"), list) else [previous]
        inputs = [str(source) for source in inputs]
        # Shapes follow a layer reading one input; a merge layer's are left unknown here.
        shape = shapes.get(inputs[0]) if len(inputs) == 1 else None
        weights = {
            key.rsplit(".", 1)[1]: list(array.shape)
            for key, array in sorted(raw.weights.items())
            if key.rsplit(".", 1)[0] == name
        }
        row = {
            "index": index,
            "name": name,
            "type": str(layer.get("type", "?")),
            "inputs": inputs,
            "output_shape": None,
            "params": sum(math.prod(dims) for dims in weights.values()),
            "flops": None,
            "config": hyperparameters(layer),
            "weights": weights,
        }
        if shape is not None:
            shape, row["flops"] = shape_through(layer, shape, registry)
            row["output_shape"] = list(shape) if shape is not None else None
        shapes[name], previous = shape, name
        rows.append(row)
    return {
        "name": str(spec.get("name", "?")),
        "input_shape": spec.get("input_shape"),
        "classes": spec.get("classes"),
        "layers": rows,
        "total_flops": None,
    }


def stored_input_shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value
    ):
        return tuple(value)
    return None


def shape_through(config: dict, input_shape: tuple[int, ...], registry: Any) -> tuple[Any, int | None]:
    """(output shape, FLOPs) of one stored layer config if its type is installed and takes
    `input_shape`, else (None, None)."""
    try:
        layer_class = registry.get(config.get("type"))
        layer = layer_class(layer_class.Config.model_validate(config))
        output_shape = tuple(layer.compute_output_shape(input_shape))
        return output_shape, int(layer.flops(input_shape))
    except Exception:  # an uninstalled type, or a config this version cannot read: shape unknown
        return None, None


def is_graph(rows: list[dict[str, Any]]) -> bool:
    """Whether some layer reads other than the one before it (or than the input, the first)."""
    previous = INPUT
    for row in rows:
        if row["inputs"] != [previous]:
            return True
        previous = row["name"]
    return False


def dot_graph(info: dict[str, Any]) -> str:
    """The network as a Graphviz DOT digraph: the input, then a box per layer with its name,
    type and output shape, and an edge from every layer to each layer reading it."""

    def text(value: Any) -> str:  # inside a DOT string
        return str(value).replace("\\", "\\\\").replace('"', '\\"')

    nodes = {INPUT: "input"}
    lines = [
        f'digraph "{text(info["name"])}" {{',
        "  rankdir=TB;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        f'  input [shape=ellipse, label="input {tuple(info["input_shape"] or ())}"];',
    ]
    for row in info["layers"]:
        node = nodes[row["name"]] = f"n{row['index']}"
        shape = "?" if row["output_shape"] is None else tuple(row["output_shape"])
        lines.append(f'  {node} [label="{text(row["name"])}\\n{text(row["type"])} {shape}"];')
        lines += [f"  {nodes[source]} -> {node};" for source in row["inputs"] if source in nodes]
    lines.append("}")
    return "\n".join(lines) + "\n"


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


def file_summary(path: Any) -> dict[str, Any]:
    """Describe a spec (JSON) or a bundle, told apart by their first byte."""
    if is_spec_file(path):
        return spec_summary(validate_spec(path))
    return bundle_summary(read_bundle(path))
