"""ONNX in: a graph made of the ops cnntool's layers cover, as a spec and its weights.

Reading treats the file as a stranger's: the size limit before the bytes are read, the
protobuf parsed by the onnx library, opsets 13 and later of the default domain only (no
custom domains, no model-local functions), every array's size checked from its dims before it
is made, and external data read only from files inside the model's own folder.

Converting walks the nodes needed for the graph's first output in their (topological) order,
keeping for each tensor either a constant (initializer, Constant) or a value computed from the
network input: the layer producing it and its shape without the batch axis. Each op becomes
a layer, folds into the layer before it, or passes its input through:

    Conv -> conv2d (depthwise_conv2d for one group per channel, where cnntool-extras is
    installed); Gemm, MatMul -> dense (an Add of a constant right after a bias-less dense or
    conv2d is its bias); Relu, Sigmoid, Tanh, Softmax, Concat, Add, Sum -> their layers;
    MaxPool, AveragePool -> maxpool2d, avgpool2d; BatchNormalization -> batchnorm2d or
    batchnorm1d; GlobalAveragePool or ReduceMean over height and width, then Flatten or a
    Reshape to (batch, features) -> global_avgpool2d; Flatten, Reshape to (batch, features)
    -> flatten; Dropout, Identity -> nothing.

Layers are named after their weights (`features.0.weight` -> `features_0`) or else their nodes,
so an exported cnntool graph comes back with its own names. Everything that cannot be
represented (an unsupported op, asymmetric pads, dilation, groups, padded pooling) is
collected and reported in one error, node by node.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np
from pydantic import ValidationError

from cnntool.bundle import model_digest
from cnntool.errors import CnntoolError, InterchangeError, checked_path, exception_text
from cnntool.interchange.common import (
    META_CLASSES,
    META_PREPROCESSING,
    build_network,
    check_array_size,
    metadata_json,
    preprocessing_from,
    read_limited,
    require,
    sha256_of,
    write_imported,
)
from cnntool.layers.base import InputShape, ShapeError, padding_sides, pair
from cnntool.model.registry import get_registry

MIN_OPSET = 13
MAX_NODES = 100_000
DEFAULT_DOMAINS = ("", "ai.onnx")
# TensorProto data types cnntool reads, with the field holding their values when not raw.
TENSOR_TYPES = {
    1: (np.float32, "float_data"),
    11: (np.float64, "double_data"),
    10: (np.float16, "int32_data"),
    7: (np.int64, "int64_data"),
    6: (np.int32, "int32_data"),
    9: (np.bool_, "int32_data"),
}
EXTERNAL = 1  # TensorProto.EXTERNAL
COVERED = (
    "Conv, Gemm, MatMul(+Add), Relu, Sigmoid, Tanh, MaxPool, AveragePool, GlobalAveragePool, "
    "ReduceMean (over height and width), BatchNormalization, Flatten, Reshape (to batch x features), "
    "Add, Sum, Concat, Softmax, Dropout, Identity, Constant"
)


class Unsupported(Exception):
    """A node that cannot become a layer; the message says why."""


@dataclass
class Value:
    """A tensor computed from the network input: the layer that produces it ('input' for the
    input itself) and its shape without the batch axis. `squeezed`: an ONNX (N, C, 1, 1)
    tensor that cnntool holds as (C,), the output of global pooling before its flatten."""

    source: str
    shape: tuple[int, ...]
    squeezed: bool = False


@dataclass
class Pending:
    """A layer of the spec being made, with its arrays."""

    config: dict
    params: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class OnnxFile:
    """A parsed, checked ONNX model and where it came from."""

    model: Any
    path: Path
    sha256: str
    opset: int


def read_onnx(path: str | os.PathLike) -> OnnxFile:
    """Parse an ONNX file within the limits and refuse what cnntool never runs: opsets before
    13, custom domains, model-local functions, sparse initializers."""
    onnx = require("onnx")
    path = checked_path(path, InterchangeError)
    data = read_limited(path, "an ONNX model")
    where = str(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        cause = exception_text(exc)
        raise InterchangeError(f"{where}: not an ONNX model (it does not parse: {cause})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InterchangeError(f"{where}: not an ONNX model (it holds no graph with nodes)")
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if version is None:
        raise InterchangeError(f"{where}: the model imports no opset of the default ONNX domain")
    if not MIN_OPSET <= version <= newest:
        raise InterchangeError(
            f"{where}: opset {version} is not supported; cnntool reads opsets {MIN_OPSET} to {newest}"
            + (" (re-export with opset_version=17)" if version < MIN_OPSET else " (upgrade onnx)")
        )
    problems = []
    if len(model.graph.node) > MAX_NODES:
        problems.append(f"the graph has {len(model.graph.node)} nodes, more than {MAX_NODES}")
    custom = sorted({node.domain for node in model.graph.node if node.domain not in DEFAULT_DOMAINS})
    if custom:
        problems.append(f"custom operator domains are not supported: {', '.join(map(repr, custom))}")
    if model.functions:
        names = ", ".join(repr(f"{f.domain}.{f.name}") for f in model.functions[:5])
        problems.append(f"model-local functions (custom operators) are not supported: {names}")
    if model.graph.sparse_initializer:
        problems.append("sparse initializers are not supported")
    if problems:
        raise InterchangeError(f"{where}: " + "; ".join(problems))
    return OnnxFile(model, path, sha256_of(data), version)


def import_onnx(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: list[str] | None = None,
    preprocessing: Any = None,
) -> dict:
    """Convert an ONNX file into a bundle written to `out`; return what was done."""

    source = read_onnx(path)
    where = str(source.path)
    metadata = {prop.key: prop.value for prop in source.model.metadata_props}
    converter = Converter(source)
    spec, weights, state = converter.convert()
    classes = classes or metadata_json(metadata, META_CLASSES, list, where)
    if classes is not None:
        spec["classes"] = classes
    net = build_network(spec, weights, state, where)
    if preprocessing is None:
        preprocessing = metadata_json(metadata, META_PREPROCESSING, dict, where)
    model = source.model
    imported = {
        "file": source.path.name, "format": "onnx", "sha256": source.sha256, "opset": source.opset,
        "ir_version": int(model.ir_version),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ignored_outputs": converter.ignored_outputs,
    }  # fmt: skip
    bundle_path = write_imported(
        net, out, {"preprocessing": preprocessing_from(preprocessing or {}, where), "imported_from": imported}
    )
    return {
        "path": str(bundle_path),
        "source": where,
        "format": "onnx",
        "opset": source.opset,
        "nodes": converter.converted,
        "layers": len(spec["layers"]),
        "ignored_outputs": converter.ignored_outputs,
        "digest": model_digest(net.params(), net.state()),
    }


class Converter:
    """One ONNX graph into a spec, weights and state (see the module docs)."""

    def __init__(self, source: OnnxFile) -> None:

        self.onnx = require("onnx")
        self.source = source
        self.where = str(source.path)
        self.folder = source.path.resolve().parent
        self.graph = source.model.graph
        self.registry = get_registry()
        self.initializers = {tensor.name: tensor for tensor in self.graph.initializer}
        self.constants: dict[str, np.ndarray] = {}
        self.values: dict[str, Value] = {}
        self.unknown: set[str] = set()  # outputs of nodes that failed: not reported again
        self.layers: list[Pending] = []
        self.names: set[str] = {"input"}
        self.problems: list[str] = []
        self.unsupported: dict[str, list[str]] = {}
        self.ignored_outputs: list[str] = []
        self.converted = 0

    # --- the whole graph -------------------------------------------------------------------

    def convert(self) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
        input_shape = self.network_input()
        if not self.graph.output:
            raise InterchangeError(f"{self.where}: the graph has no output")
        output = self.graph.output[0].name
        self.ignored_outputs = [value.name for value in self.graph.output[1:]]
        nodes = self.live_nodes(output)
        self.consumers: dict[str, list[Any]] = {}
        for node in nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for node in nodes:
            self.convert_node(node)
        result = self.values.get(output)
        if result is None and output not in self.unknown:
            self.problems.append(f"the graph's output {output!r} is not computed from its input")
        elif result is not None and (result.squeezed or len(result.shape) != 1):
            shape = "C, 1, 1" if result.squeezed else ", ".join(map(str, result.shape))
            self.problems.append(
                f"the graph's output {output!r} has shape (batch, {shape}); a classifier outputs "
                "(batch, classes)"
            )
        elif result is not None and not self.layers:
            self.problems.append("the graph computes nothing from its input")
        if self.unsupported or self.problems:
            raise InterchangeError(f"{self.where}: cannot import: " + "; ".join(self.messages()))
        spec = {
            "name": sanitize(self.graph.name)[:128] or sanitize(self.source.path.stem)[:128] or "network",
            "input_shape": list(input_shape),
            "layers": [layer.config for layer in self.layers],
        }
        weights = {f"{p.config['name']}.{key}": value for p in self.layers for key, value in p.params.items()}
        state = {f"{p.config['name']}.{key}": value for p in self.layers for key, value in p.state.items()}
        return spec, weights, state

    def messages(self) -> list[str]:
        found = []
        if self.unsupported:
            ops = [
                f"{op} ({', '.join(map(repr, names[:3]))}{' ...' if len(names) > 3 else ''})"
                for op, names in sorted(self.unsupported.items())
            ]
            found.append(f"unsupported ops: {', '.join(ops)} (cnntool covers {COVERED})")
        return found + self.problems

    def network_input(self) -> tuple[int, int, int]:
        inputs = [value for value in self.graph.input if value.name not in self.initializers]
        if len(inputs) != 1:
            raise InterchangeError(
                f"{self.where}: the graph has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); "
                "cnntool networks take one batch of images"
            )
        value = inputs[0]
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if tensor.elem_type != 1 or len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
            shown = ", ".join("?" if d is None else str(d) for d in dims)
            raise InterchangeError(
                f"{self.where}: input {value.name!r} is ({shown}) of ONNX type {tensor.elem_type}; cnntool "
                "takes float32 (batch, channels, height, width) with fixed channels, height and width"
            )
        shape = cast("tuple[int, int, int]", tuple(dims[1:]))  # checked above: three, none None
        self.values[value.name] = Value("input", shape)
        return shape

    def live_nodes(self, output: str) -> list[Any]:
        """The nodes the output depends on, in the graph's order."""
        producer: dict[str, int] = {}
        for index, node in enumerate(self.graph.node):
            for name in node.output:
                if name in producer or name in self.initializers:
                    raise InterchangeError(f"{self.where}: tensor {name!r} is produced twice")
                if name:
                    producer[name] = index
        live: set[int] = set()
        stack = [output]
        while stack:
            at = producer.get(stack.pop())
            if at is None or at in live:
                continue
            live.add(at)
            stack.extend(self.graph.node[at].input)
        return [node for index, node in enumerate(self.graph.node) if index in live]

    def convert_node(self, node: Any) -> None:
        """Convert one node, or note why not: every unsupported op is listed, but a supported
        node reading a tensor that failed is skipped (its error would only repeat)."""
        handler = getattr(self, f"op_{node.op_type}", None)
        name = node.name or (node.output[0] if node.output else "?")
        if handler is None:
            self.unsupported.setdefault(node.op_type, []).append(name)
            self.unknown.update(node.output)
            return
        if any(tensor in self.unknown for tensor in node.input):
            self.unknown.update(node.output)
            return
        label = f"node {name!r} ({node.op_type})"
        try:
            handler(node, self.attributes(node))
            self.converted += 1
        except Unsupported as exc:
            self.problems.append(f"{label}: {exc}")
            self.unknown.update(node.output)
        except CnntoolError as exc:
            self.problems.append(f"{label}: {exc}")
            self.unknown.update(node.output)
        except Exception as exc:  # a malformed node of a stranger's file
            self.problems.append(f"{label}: malformed ({exception_text(exc)})")
            self.unknown.update(node.output)

    # --- reading inputs --------------------------------------------------------------------

    def attributes(self, node: Any) -> dict[str, Any]:
        found = {}
        for attribute in node.attribute:
            value = self.onnx.helper.get_attribute_value(attribute)
            found[attribute.name] = value.decode() if isinstance(value, bytes) else value
        return found

    def value(self, node: Any, index: int) -> Value:
        name = node.input[index] if index < len(node.input) else ""
        if name in self.values:
            return self.values[name]
        if self.is_constant(name):
            raise Unsupported(
                f"input {index} ({name!r}) is a constant; cnntool computes it from the network input"
            )
        raise Unsupported(f"input {index} ({name!r}) is not defined before the node")

    def is_constant(self, name: str) -> bool:
        return name in self.constants or name in self.initializers

    @overload
    def constant(self, node: Any, index: int, required: Literal[True] = True) -> np.ndarray: ...

    @overload
    def constant(self, node: Any, index: int, required: bool) -> np.ndarray | None: ...

    def constant(self, node: Any, index: int, required: bool = True) -> np.ndarray | None:
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            if required:
                raise Unsupported(f"input {index} is missing")
            return None
        if name not in self.constants:
            if name not in self.initializers:
                raise Unsupported(f"input {index} ({name!r}) must be a constant (an initializer)")
            self.constants[name] = self.tensor_array(self.initializers[name], f"initializer {name!r}")
        return self.constants[name]

    def weights(self, node: Any, index: int, ndim: int) -> np.ndarray:
        array = self.constant(node, index)
        if array is None or array.ndim != ndim or array.dtype.kind != "f":
            shape = None if array is None else list(array.shape)
            raise Unsupported(f"input {index} must be {ndim}-D float weights, found shape {shape}")
        return np.ascontiguousarray(array, np.float32)

    def tensor_array(self, tensor: Any, where: str) -> np.ndarray:
        """A TensorProto as an array, its size checked against its data before it is made."""
        kind = TENSOR_TYPES.get(tensor.data_type)
        if kind is None:
            raise Unsupported(f"{where} has ONNX data type {tensor.data_type}, which cnntool does not read")
        dtype, values = np.dtype(kind[0]), kind[1]
        dims = check_array_size(tensor.dims, dtype.itemsize, f"{self.where}: {where}")
        count = math.prod(dims)
        if tensor.data_location == EXTERNAL:
            raw = self.external_bytes(tensor, count * dtype.itemsize, where)
            return np.frombuffer(raw, dtype.newbyteorder("<")).reshape(dims)
        if tensor.HasField("raw_data"):
            if len(tensor.raw_data) != count * dtype.itemsize:
                raise Unsupported(
                    f"{where}: shape {list(dims)} needs {count * dtype.itemsize} bytes, its data has "
                    f"{len(tensor.raw_data)}"
                )
        elif len(getattr(tensor, values)) != count:
            raise Unsupported(
                f"{where}: shape {list(dims)} needs {count} values, it has {len(getattr(tensor, values))}"
            )
        return self.onnx.numpy_helper.to_array(tensor)

    def external_bytes(self, tensor: Any, size: int, where: str) -> bytes:
        """The bytes of an externally stored tensor, from a file inside the model's folder."""
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or "\x00" in location:
            raise Unsupported(f"{where}: external data without a valid location")
        target = (self.folder / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(self.folder):
            raise InterchangeError(
                f"{where}: external data {location!r} points outside the model's folder {self.folder}; "
                "refused (keep the data file beside the model)"
            )
        try:
            offset = int(info.get("offset", "0"))
            length = int(info.get("length", str(size)))
        except ValueError:
            raise Unsupported(f"{where}: external data offset or length is not a number") from None
        if length != size or offset < 0:
            raise Unsupported(
                f"{where}: external data holds {length} bytes at {offset}; the shape needs {size}"
            )
        try:
            with target.open("rb") as handle:
                if target.stat().st_size < offset + size:
                    raise Unsupported(f"{where}: external data file {location!r} is too short")
                handle.seek(offset)
                return handle.read(size)
        except OSError as exc:
            raise Unsupported(
                f"{where}: cannot read external data {location!r}: {exc.strerror or exc}"
            ) from None

    def only_first_output(self, node: Any) -> None:
        for name in node.output[1:]:
            if name and self.consumers.get(name):
                raise Unsupported(f"its output {name!r} is used; cnntool computes only the first output")

    # --- making layers ---------------------------------------------------------------------

    def add_layer(
        self, node: Any, config: dict, inputs: list[Value], params: dict | None = None,
        state: dict | None = None,
    ) -> Value:  # fmt: skip
        """A layer for `node` reading `inputs`: named, its shape inferred by its own class."""

        kind = config["type"]
        weight = node.input[1] if params and len(node.input) > 1 else ""
        name = self.layer_name(node, kind, weight)
        layer_class = self.registry.get(kind)
        try:
            layer = layer_class(layer_class.Config.model_validate({**config, "name": name}))
            shapes = tuple(v.shape for v in inputs)
            given: InputShape = shapes if layer.multi_input else shapes[0]
            shape = tuple(layer.compute_output_shape(given))
        except ValidationError as exc:
            raise Unsupported(
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            ) from None
        except ShapeError as exc:
            raise Unsupported(str(exc)) from None
        previous = self.layers[-1].config["name"] if self.layers else "input"
        entry = {"type": kind, "name": name, **{k: v for k, v in config.items() if k != "type"}}
        if [v.source for v in inputs] != [previous]:
            entry["inputs"] = [v.source for v in inputs]
        self.layers.append(Pending(entry, dict(params or {}), dict(state or {})))
        self.names.add(name)
        return Value(name, shape)

    def layer_name(self, node: Any, kind: str, weight: str) -> str:
        """From the weights' name (`features.0.weight` -> `features_0`), else the node's."""
        base = weight[: -len(".weight")] if weight.endswith(".weight") else node.name
        name = sanitize(base) or kind
        if name[0].isdigit():
            name = f"{kind}_{name}"
        name = name[:60]
        found, k = name, 1
        while found in self.names:
            k += 1
            found = f"{name}_{k}"
        return found

    def output(self, node: Any, value: Value) -> None:
        self.values[node.output[0]] = value

    def image(self, node: Any, index: int = 0) -> Value:
        value = self.value(node, index)
        if len(value.shape) != 3 or value.squeezed:
            raise Unsupported(
                "expects an image (batch, channels, height, width), its input is "
                f"(batch, {shape_text(value)})"
            )
        return value

    # --- the ops ---------------------------------------------------------------------------

    def op_Constant(self, node: Any, attrs: dict) -> None:
        if "value" in attrs:
            self.constants[node.output[0]] = self.tensor_array(attrs["value"], "constant")
        elif set(attrs) & {"value_float", "value_floats", "value_int", "value_ints"}:
            key = next(iter(set(attrs) & {"value_float", "value_floats", "value_int", "value_ints"}))
            dtype = np.float32 if "float" in key else np.int64
            self.constants[node.output[0]] = np.asarray(attrs[key], dtype)
        else:
            raise Unsupported(f"only tensor and number constants are supported, found {', '.join(attrs)}")

    def op_Identity(self, node: Any, attrs: dict) -> None:
        name = node.input[0]
        if self.is_constant(name):
            self.constants[node.output[0]] = self.constant(node, 0)
        else:
            self.output(node, self.value(node, 0))

    def op_Dropout(self, node: Any, attrs: dict) -> None:
        self.only_first_output(node)
        training = self.constant(node, 2, required=False)
        if training is not None and bool(np.asarray(training).any()):
            raise Unsupported("training_mode is true; cnntool imports inference graphs")
        self.output(node, self.value(node, 0))

    def op_Relu(self, node: Any, attrs: dict) -> None:
        self.output(node, self.add_layer(node, {"type": "relu"}, [self.value(node, 0)]))

    def op_Sigmoid(self, node: Any, attrs: dict) -> None:
        self.output(node, self.add_layer(node, {"type": "sigmoid"}, [self.value(node, 0)]))

    def op_Tanh(self, node: Any, attrs: dict) -> None:
        self.output(node, self.add_layer(node, {"type": "tanh"}, [self.value(node, 0)]))

    def op_Softmax(self, node: Any, attrs: dict) -> None:
        value = self.value(node, 0)
        if len(value.shape) != 1 or attrs.get("axis", -1) not in (1, -1):
            raise Unsupported(
                f"softmax over axis {attrs.get('axis', -1)} of (batch, {shape_text(value)}); cnntool's is "
                "over the features of a flat input"
            )
        self.output(node, self.add_layer(node, {"type": "softmax"}, [value]))

    def op_Conv(self, node: Any, attrs: dict) -> None:
        x = self.image(node)
        weight = self.weights(node, 1, 4)
        bias = self.constant(node, 2, required=False)
        kernel = list(attrs.get("kernel_shape", weight.shape[2:]))
        strides = list(attrs.get("strides", [1, 1]))
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise Unsupported(
                f"dilations {list(attrs['dilations'])} are not supported (cnntool's convolutions have none)"
            )
        if kernel != list(weight.shape[2:]) or len(strides) != 2:
            raise Unsupported(
                f"kernel_shape {kernel} and strides {strides} do not fit weights {list(weight.shape)}"
            )
        group, channels = int(attrs.get("group", 1)), x.shape[0]
        padding = self.conv_padding(x, kernel, strides, attrs)
        config: dict = {"kernel_size": compact(kernel), "stride": compact(strides), "padding": padding}
        if group == 1 and weight.shape[1] == channels:
            config = {"type": "conv2d", "filters": int(weight.shape[0]), **config}
        elif group == channels and weight.shape[1] == 1 and "depthwise_conv2d" in self.registry.types:
            config = {
                "type": "depthwise_conv2d",
                **config,
                "depth_multiplier": int(weight.shape[0]) // channels,
            }
        else:
            raise Unsupported(
                f"group={group} on {channels} channels with weights {list(weight.shape)} is not supported "
                "(cnntool's conv2d has one group; one group per channel is cnntool-extras' depthwise_conv2d)"
            )
        params = {"weight": weight}
        if bias is not None:
            params["bias"] = self.bias(bias, weight.shape[0])
        config["use_bias"] = bias is not None
        self.output(node, self.add_layer(node, config, [x], params))

    def conv_padding(self, x: Value, kernel: list[int], strides: list[int], attrs: dict) -> Any:
        """cnntool's `padding` for ONNX's pads: equal on both sides, or the extra at the bottom
        and right as 'same' puts it."""
        auto = attrs.get("auto_pad", "NOTSET")
        same = padding_sides(x.shape[1], x.shape[2], pair(kernel), pair(strides), "same")
        if auto == "VALID":
            return 0
        if auto == "SAME_UPPER":
            return "same"
        if auto == "SAME_LOWER":
            top, left, bottom, right = same
            if (top, left) == (bottom, right):
                return "same"
            raise Unsupported("auto_pad SAME_LOWER puts the extra padding first; cnntool puts it last")
        if auto != "NOTSET":
            raise Unsupported(f"auto_pad {auto!r} is not supported")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or any(p < 0 for p in pads):
            raise Unsupported(f"pads {pads} are not four sizes >= 0")
        top, left, bottom, right = pads
        if (top, left) == (bottom, right):
            return compact([top, left])
        if tuple(pads) == same:
            return "same"
        raise Unsupported(
            f"asymmetric pads {pads} (top, left, bottom, right) are not supported: cnntool pads both sides "
            "equally, or as 'same' does (the extra at the bottom and right)"
        )

    def bias(self, bias: np.ndarray, units: int) -> np.ndarray:
        if bias.dtype.kind != "f" or bias.size != units or max(bias.shape, default=1) != bias.size:
            raise Unsupported(f"bias of shape {list(bias.shape)} does not fit {units} outputs")
        return np.ascontiguousarray(bias.reshape(units), np.float32)

    def flat(self, node: Any) -> Value:
        value = self.value(node, 0)
        if len(value.shape) != 1:
            raise Unsupported(
                f"expects a flat input (batch, features), found (batch, {shape_text(value)}); flatten first"
            )
        return value

    def op_Gemm(self, node: Any, attrs: dict) -> None:
        x = self.flat(node)
        weight = self.weights(node, 1, 2)
        if attrs.get("transA", 0):
            raise Unsupported("transA=1 is not supported")
        weight = weight if attrs.get("transB", 0) else weight.T
        weight = np.ascontiguousarray(weight * np.float32(attrs.get("alpha", 1.0)), np.float32)
        if weight.shape[1] != x.shape[0]:
            raise Unsupported(
                f"weights {list(weight.shape)} (as out x in) do not fit {x.shape[0]} input features"
            )
        bias = self.constant(node, 2, required=False)
        params = {"weight": weight}
        if bias is not None:
            bias = np.broadcast_to(np.asarray(bias, np.float32), (weight.shape[0],)) * np.float32(
                attrs.get("beta", 1.0)
            )
            params["bias"] = np.ascontiguousarray(bias, np.float32)
        config = {"type": "dense", "units": int(weight.shape[0]), "use_bias": bias is not None}
        self.output(node, self.add_layer(node, config, [x], params))

    def op_MatMul(self, node: Any, attrs: dict) -> None:
        x = self.flat(node)
        weight = self.weights(node, 1, 2)
        if weight.shape[0] != x.shape[0]:
            raise Unsupported(
                f"weights {list(weight.shape)} (as in x out) do not fit {x.shape[0]} input features"
            )
        config = {"type": "dense", "units": int(weight.shape[1]), "use_bias": False}
        self.output(node, self.add_layer(node, config, [x], {"weight": np.ascontiguousarray(weight.T)}))

    def op_Add(self, node: Any, attrs: dict) -> None:
        constants = [k for k in range(2) if self.is_constant(node.input[k])]
        if not constants:
            self.output(
                node, self.add_layer(node, {"type": "add"}, [self.value(node, 0), self.value(node, 1)])
            )
            return
        if len(constants) == 2:
            raise Unsupported("adds two constants")
        value = self.value(node, 1 - constants[0])
        bias = self.constant(node, constants[0])
        layer = self.layers[-1] if self.layers else None
        if (
            layer is None
            or layer.config["name"] != value.source
            or layer.config["type"] not in ("dense", "conv2d", "depthwise_conv2d")
            or layer.config["use_bias"]
            or len(self.consumers.get(node.input[1 - constants[0]], [])) != 1
        ):
            raise Unsupported("adds a constant that is not the bias of the MatMul or Conv right before it")
        units = value.shape[0]
        core = tuple(bias.shape)
        while len(core) > len(value.shape) and core[0] == 1:
            core = core[1:]
        if core != (units, *(1,) * (len(value.shape) - 1)):
            raise Unsupported(f"constant of shape {list(bias.shape)} is not a bias of {units} outputs")
        layer.params["bias"] = self.bias(bias, units)
        layer.config["use_bias"] = True
        self.output(node, value)

    def op_Sum(self, node: Any, attrs: dict) -> None:
        inputs = [self.value(node, k) for k in range(len(node.input))]
        if len(inputs) == 1:
            self.output(node, inputs[0])
        else:
            self.output(node, self.add_layer(node, {"type": "add"}, inputs))

    def op_Concat(self, node: Any, attrs: dict) -> None:
        inputs = [self.image(node, k) for k in range(len(node.input))]
        if attrs.get("axis") not in (1, -3):
            raise Unsupported(
                f"concatenates along axis {attrs.get('axis')}; cnntool's concat joins channels (axis 1)"
            )
        self.output(node, self.add_layer(node, {"type": "concat"}, inputs))

    def op_BatchNormalization(self, node: Any, attrs: dict) -> None:
        self.only_first_output(node)
        if attrs.get("training_mode", 0):
            raise Unsupported("training_mode=1; cnntool imports inference graphs")
        x = self.value(node, 0)
        if x.squeezed or len(x.shape) not in (1, 3):
            raise Unsupported(f"normalises (batch, {shape_text(x)}); expected an image or a flat input")
        arrays = [self.weights(node, k, 1) for k in range(1, 5)]
        if any(a.shape != (x.shape[0],) for a in arrays):
            raise Unsupported(f"scale, bias, mean and var must have {x.shape[0]} values each")
        momentum = min(max(round(1.0 - float(attrs.get("momentum", 0.9)), 6), 0.0), 1.0)
        config = {"type": "batchnorm2d" if len(x.shape) == 3 else "batchnorm1d",
                  "eps": float(attrs.get("epsilon", 1e-5)), "momentum": momentum}  # fmt: skip
        params = {"weight": arrays[0], "bias": arrays[1]}
        state = {"running_mean": arrays[2], "running_var": arrays[3]}
        self.output(node, self.add_layer(node, config, [x], params, state))

    def op_MaxPool(self, node: Any, attrs: dict) -> None:
        self.pool(node, attrs, "maxpool2d")

    def op_AveragePool(self, node: Any, attrs: dict) -> None:
        self.pool(node, attrs, "avgpool2d")

    def pool(self, node: Any, attrs: dict, kind: str) -> None:
        self.only_first_output(node)
        x = self.image(node)
        kernel = list(attrs.get("kernel_shape", []))
        strides = list(attrs.get("strides", [1] * len(kernel)))
        if len(kernel) != 2 or len(strides) != 2:
            raise Unsupported(f"kernel_shape {kernel} and strides {strides} are not 2-D")
        if any(attrs.get("pads", [0, 0, 0, 0])) or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Unsupported(
                f"padded pooling (pads {list(attrs.get('pads', []))}, auto_pad "
                f"{attrs.get('auto_pad', 'NOTSET')}) is not supported"
            )
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise Unsupported(f"dilations {list(attrs['dilations'])} are not supported")
        if attrs.get("ceil_mode", 0) and any(
            (size - k) % s for size, k, s in zip(x.shape[1:], kernel, strides, strict=True)
        ):
            raise Unsupported("ceil_mode=1 adds a partial window here; cnntool's windows always fit")
        config = {"type": kind, "pool_size": compact(kernel), "stride": compact(strides)}
        self.output(node, self.add_layer(node, config, [x]))

    def op_GlobalAveragePool(self, node: Any, attrs: dict) -> None:
        self.global_pool(node, keepdims=True)

    def op_ReduceMean(self, node: Any, attrs: dict) -> None:
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.constant(node, 1).tolist()
        rank = 4
        if axes is None or sorted(int(a) % rank for a in np.atleast_1d(axes)) != [2, 3]:
            raise Unsupported(f"mean over axes {axes}; cnntool averages over height and width (axes 2, 3)")
        self.global_pool(node, keepdims=bool(attrs.get("keepdims", 1)))

    def global_pool(self, node: Any, keepdims: bool) -> None:
        """global_avgpool2d when what follows flattens the (N, C, 1, 1) result (or there is
        none), else avgpool2d over the whole image, which keeps it."""
        x = self.image(node)
        readers = self.consumers.get(node.output[0], [])
        if not keepdims or all(reader.op_type in ("Flatten", "Reshape") for reader in readers):
            value = self.add_layer(node, {"type": "global_avgpool2d"}, [x])
            self.output(node, Value(value.source, value.shape, squeezed=keepdims))
        else:
            config = {"type": "avgpool2d", "pool_size": compact(list(x.shape[1:]))}
            self.output(node, self.add_layer(node, config, [x]))

    def op_Flatten(self, node: Any, attrs: dict) -> None:
        value = self.value(node, 0)
        rank = 2 if len(value.shape) == 1 and not value.squeezed else 4
        if attrs.get("axis", 1) % rank != 1:
            raise Unsupported(
                f"flattens from axis {attrs.get('axis')}; cnntool keeps the batch axis (axis 1)"
            )
        self.flatten(node, value)

    def op_Reshape(self, node: Any, attrs: dict) -> None:
        value = self.value(node, 0)
        shape = self.constant(node, 1)
        features = math.prod(value.shape)
        target = [int(d) for d in np.asarray(shape).reshape(-1)]
        batch_ok = lambda d: d == -1 or (d == 0 and not attrs.get("allowzero", 0))  # noqa: E731
        if (
            len(target) != 2
            or not batch_ok(target[0])
            or target[1] not in (features, -1)
            or target == [-1, -1]
        ):
            raise Unsupported(
                f"reshapes (batch, {shape_text(value)}) to {target}; cnntool reshapes only to "
                f"(batch, features) as [-1, {features}] or [0, -1]"
            )
        self.flatten(node, value)

    def flatten(self, node: Any, value: Value) -> None:
        if value.squeezed or len(value.shape) == 1:
            self.output(node, Value(value.source, value.shape))
        else:
            self.output(node, self.add_layer(node, {"type": "flatten"}, [value]))


def compact(pair: list[int]) -> int | list[int]:
    """[3, 3] as 3, [2, 3] as it is: how a spec writes sizes."""
    values = [int(v) for v in pair]
    return values[0] if len(set(values)) == 1 else values


def sanitize(text: str) -> str:
    """A layer or network name from an ONNX name: letters, digits, `_` and `-`."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_-")


def shape_text(value: Value) -> str:
    return "C, 1, 1" if value.squeezed else ", ".join(map(str, value.shape))
