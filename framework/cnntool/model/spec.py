"""Network specs: pydantic models validated against the registry, and shape inference.

A spec is JSON (a dict, JSON text or a file). Validation runs before anything else:
unknown layer types, bad values and shapes that do not fit together are `SpecError`s that
name the layer by index and name and say what was expected and what was received.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from typing import Any

from pydantic import BaseModel, ValidationError

from cnntool.errors import CnntoolError, SpecError, checked_path, short_repr
from cnntool.layers.base import InputShape, Layer, ShapeError
from cnntool.model.registry import Registry, get_registry
from cnntool.model.spec_fields import MAX_INPUT_ELEMENTS, MAX_SPEC_BYTES, SpecBase, TrainingConfig

__all__ = [
    "INPUT",
    "MAX_INPUT_ELEMENTS",
    "MAX_SPEC_BYTES",
    "SpecBase",
    "TrainingConfig",
    "plan_layers",
    "validate_spec",
]


def read_spec_data(source: Any) -> dict:
    """A spec as plain data from a dict, JSON text, or a path to a JSON file."""
    if isinstance(source, BaseModel):
        return source.model_dump(mode="json", exclude_none=True)
    if isinstance(source, dict):
        return source
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        return parse_json(source, "spec")
    if isinstance(source, (str, os.PathLike)):
        path = checked_path(source, SpecError)
        try:
            if path.stat().st_size > MAX_SPEC_BYTES:
                raise SpecError(f"{path}: spec file is larger than {MAX_SPEC_BYTES >> 20} MiB")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(f"{path}: spec file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: cannot read spec file: {exc}") from None
        return parse_json(text, str(path))
    raise SpecError(f"a spec must be a dict, JSON text or a path, received {type(source).__name__}")


def parse_json(text: str, where: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SpecError(f"{where}: JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a spec must be a JSON object, received {type(data).__name__}")
    return data


def is_spec_file(path: str | os.PathLike) -> bool:
    """True for a JSON spec, False for anything else (a bundle): a spec's first non-blank
    byte is '{'. A missing or unreadable file is a CnntoolError naming it."""
    path = checked_path(path, CnntoolError)
    try:
        with path.open("rb") as handle:
            return handle.read(64).lstrip().startswith(b"{")
    except FileNotFoundError:
        raise CnntoolError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CnntoolError(f"{path}: is a folder; expected a bundle or a spec file") from None
    except OSError as exc:
        raise CnntoolError(f"{path}: cannot read: {exc.strerror or exc}") from None


def validate_spec(source: Any, registry: Registry | None = None) -> SpecBase:
    """Validate a spec's fields and shapes; return the spec with every layer name filled in."""
    registry = registry or get_registry()
    data = read_spec_data(source)
    model = registry.spec_model()
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        raise SpecError("invalid spec: " + format_errors(exc, data)) from None
    layers = plan_layers(spec, registry)
    named = [
        config.model_copy(update={"name": layer.name})
        for config, layer in zip(spec.layers, layers, strict=True)
    ]
    return spec.model_copy(update={"layers": named})


INPUT = "input"  # in a layer's `inputs`: the network input


def plan_layers(spec: Any, registry: Registry | None = None) -> list[Layer]:
    """Make the layers of a validated spec, name them, connect them (each layer's `sources`)
    and infer every shape (no allocation)."""
    registry = registry or get_registry()
    layers: list[Layer] = []
    counts: dict[str, int] = {}
    taken = {config.name for config in spec.layers if config.name}
    for index, config in enumerate(spec.layers):
        try:
            layer = registry.get(config.type)(config)
        except CnntoolError:
            raise
        except Exception as exc:
            raise SpecError(
                f"layer {index} ({config.type}): cannot create it: {type(exc).__name__}: {exc}"
            ) from None
        if config.name is None:
            counts[config.type] = counts.get(config.type, 0) + 1
            name = f"{config.type}_{counts[config.type]}"
            while name in taken:
                counts[config.type] += 1
                name = f"{config.type}_{counts[config.type]}"
            layer.name = name
        elif any(other.name == config.name for other in layers):
            first = next(k for k, other in enumerate(layers) if other.name == config.name)
            raise SpecError(
                f"layer {index} ({config.type}): name {config.name!r} is already the name of layer {first}; "
                "layer names must be unique"
            )
        elif config.name == INPUT:
            raise SpecError(
                f"layer {index} ({config.type}): the name {INPUT!r} stands for the network input in "
                "`inputs`; give the layer another name"
            )
        taken.add(layer.name)
        layers.append(layer)
    position = {layer.name: index for index, layer in enumerate(layers)}
    for index, layer in enumerate(layers):
        connect(layer, index, layers, position, tuple(spec.input_shape))
    unused = sorted(set(range(len(layers) - 1)) - {s for layer in layers for s in layer.sources})
    if unused:
        index = unused[0]
        raise SpecError(
            f"{label(index, layers[index])}: its output is not read by any later layer (only the last "
            "layer's output is the network's); name it in a later layer's `inputs`, or remove it"
            + (f" (also unused: {', '.join(repr(layers[k].name) for k in unused[1:])})" if unused[1:] else "")
        )
    shape = layers[-1].output_shape
    if len(shape) != 1:
        raise SpecError(
            f"the last layer {layers[-1].name!r} outputs shape {shape}; a classifier ends with flat "
            'logits (classes,): add {"type": "flatten"} and {"type": "dense", "units": <classes>}'
        )
    if spec.classes is not None and len(spec.classes) != shape[0]:
        raise SpecError(
            f"the last layer {layers[-1].name!r} outputs {shape[0]} values but the spec names "
            f"{len(spec.classes)} classes; expected one output per class"
        )
    return layers


def layer_rows(layers: list) -> list[dict[str, Any]]:
    """One row per planned or built layer: index, name, type, output shape, params, FLOPs,
    hyperparameters (`config`) and parameter shapes (`weights`)."""
    rows = []
    for index, layer in enumerate(layers):
        shapes = layer.param_shapes(layer.input_shape)
        rows.append(
            {
                "index": index,
                "name": layer.name,
                "type": layer.config.type,
                "inputs": [INPUT if source < 0 else layers[source].name for source in layer.sources],
                "output_shape": list(layer.output_shape),
                "params": sum(math.prod(shape) for shape in shapes.values()),
                "flops": int(layer.flops(layer.input_shape)),
                "config": hyperparameters(layer.config_dict()),
                "weights": {key: list(shape) for key, shape in shapes.items()},
            }
        )
    return rows


def hyperparameters(config: dict) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in ("type", "name", "inputs")}


def label(index: int, layer: Layer) -> str:
    return f"layer {index} {layer.name!r} ({layer.config.type})"


def connect(
    layer: Layer, index: int, layers: list[Layer], position: dict[str, int], input_shape: tuple
) -> None:
    """Resolve a layer's `inputs` to earlier layers, check their number, and infer its shapes."""
    where = label(index, layer)
    names = layer.config.inputs
    if names is None:
        sources: tuple[int, ...] = (index - 1,)
    else:
        found = []
        for name in names:
            if name == INPUT:
                found.append(-1)
            elif name not in position:
                earlier = [INPUT, *(other.name for other in layers[:index])]
                close = difflib.get_close_matches(name, earlier, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; earlier layers: {', '.join(earlier)}"
                raise SpecError(f"{where}: input {name!r} is not the name of a layer{hint}")
            elif position[name] >= index:
                raise SpecError(
                    f"{where}: input {name!r} is layer {position[name]}, "
                    + ("the layer itself" if position[name] == index else "which comes later")
                    + "; a layer reads only layers before it (so a network has no cycles): move it after "
                    f"{name!r}"
                )
            else:
                found.append(position[name])
        sources = tuple(found)
        if len(set(sources)) < len(sources):
            raise SpecError(f"{where}: inputs {names} name one layer twice; name each input once")
    least, most = layer.arity
    if len(sources) < least or (most is not None and len(sources) > most):
        expected = (
            f"{least} input" + ("s" if least > 1 else "")
            if least == most
            else f"at least {least} inputs"
            if most is None
            else f"{least} to {most} inputs"
        )
        received = [INPUT if s < 0 else layers[s].name for s in sources]
        hint = "; join branches first with an add or concat layer" if most == 1 else ""
        raise SpecError(f"{where}: takes {expected}, received {len(sources)} {received}{hint}")
    shapes = [input_shape if s < 0 else layers[s].output_shape for s in sources]
    given: InputShape = tuple(shapes) if layer.multi_input else shapes[0]
    try:
        out_shape = tuple(layer.compute_output_shape(given))
    except ShapeError as exc:
        detail = ""
        if layer.multi_input:
            producers = [INPUT if s < 0 else layers[s].name for s in sources]
            detail = (
                " (inputs: "
                + ", ".join(f"{p!r} gives {sh}" for p, sh in zip(producers, shapes, strict=True))
                + ")"
            )
        raise SpecError(f"{where}: {exc}{detail}") from None
    if any(d < 1 for d in out_shape):
        raise SpecError(f"{where}: input shape {given} gives an empty output {out_shape}")
    layer.sources = sources
    layer.input_shape, layer.output_shape = given, out_shape


def format_errors(exc: ValidationError, data: Any) -> str:
    """One message per offending field, naming the layer by index, type and name."""
    raw_layers = data.get("layers") if isinstance(data, dict) else None
    messages: dict[str, str] = {}
    for error in exc.errors():
        loc = error["loc"]
        if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
            index = loc[1]
            raw = raw_layers[index] if isinstance(raw_layers, list) and index < len(raw_layers) else {}
            raw = raw if isinstance(raw, dict) else {}
            label = f"layer {index}"
            if isinstance(raw.get("type"), str):
                label += f" ({raw['type']}"
                label += f" {raw['name']!r})" if isinstance(raw.get("name"), str) else ")"
            field = ".".join(str(part) for part in loc[3:4])
            where = f"{label} {field}".strip() if field else label
        else:
            where = ".".join(str(part) for part in loc) or "spec"
        if where in messages:
            continue
        text = error["msg"]
        if error["type"] == "union_tag_invalid":
            text += " (run `cnntool layers` to list the installed types)"
        if error["type"] not in ("missing", "union_tag_invalid", "union_tag_not_found"):
            text += f", received {short_repr(error.get('input'))}"
        messages[where] = f"{where}: {text}"
    return "; ".join(messages.values())
