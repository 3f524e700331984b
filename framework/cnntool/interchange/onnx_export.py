"""ONNX out: a bundle's network as an inference graph that onnxruntime, Netron or TensorRT run.

Each layer lowers itself (`Layer.onnx_nodes`, the `cnntool.layers.base.OnnxBuilder` protocol)
into a `LayerNodes` bound to it: the builder names the layer's nodes after the layer and its
weights `<layer>.<param>`, so the graph reads like the spec. The graph's input is `input`
(batch, C, H, W) with a symbolic batch dimension, its output what `Network.forward` returns
(`logits`, or `probabilities` for a network ending with softmax); `softmax=True` adds a
`probabilities` output beside the logits. Opset 17 with an explicit IR version, and the spec,
classes, preprocessing and provenance in `metadata_props`. The model must pass
`onnx.checker.check_model(full_check=True)` before it is written (atomically).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnntool import __version__
from cnntool.errors import InterchangeError
from cnntool.interchange.common import bundle_metadata, require
from cnntool.layers.base import Layer
from cnntool.model.registry import get_registry
from cnntool.system.files import atomic_write

OPSET = 17
# IR version 8 is the one of ONNX 1.12, the release that brought opset 17; every onnxruntime
# since 1.12 loads it (a newer onnx library would otherwise stamp its own, newer IR).
IR_VERSION = 8
BATCH = "batch"
INPUT = "input"
LOGITS = "logits"
PROBABILITIES = "probabilities"


class LayerNodes:
    """What a layer's `onnx_nodes(onnx, inputs)` writes into, bound to that layer:

        def onnx_nodes(self, onnx, inputs):
            return onnx.node("Gemm", [inputs[0], onnx.param("weight"), onnx.param("bias")], transB=1)

    `param(key)` adds the layer's parameter or state array `key` as the initializer
    `<layer>.<key>` (optionally reshaped) and returns its name; `constant(key, array)` adds
    any other array the nodes need under the same naming; `node(op_type, inputs, **attributes)`
    adds a node of the default ONNX domain and returns the name of its (first) output. The
    first node of a layer is named after the layer, the next ones `<layer>/<op_type>`.
    """

    def __init__(self, graph: Graph, layer: Layer) -> None:
        self.graph = graph
        self.layer = layer
        self.count = 0

    def param(self, key: str, shape: tuple[int, ...] | None = None) -> str:
        arrays = self.layer.params if key in self.layer.params else self.layer.state
        if key not in arrays:
            raise InterchangeError(f"layer {self.layer.name!r} has no parameter or state {key!r}")
        array = np.asarray(arrays[key], np.float32)
        return self.constant(key, array if shape is None else array.reshape(shape))

    def constant(self, key: str, array: np.ndarray) -> str:
        return self.graph.initializer(f"{self.layer.name}.{key}", np.ascontiguousarray(array))

    def node(self, op_type: str, inputs: list[str], **attributes: Any) -> str:
        name = self.layer.name if self.count == 0 else f"{self.layer.name}/{op_type}"
        self.count += 1
        attributes = {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}
        return self.graph.node(op_type, inputs, name, attributes)


class Graph:
    """Nodes and initializers as the layers add them, every name unique."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: set[str] = {INPUT, LOGITS, PROBABILITIES}
        self.node_names: set[str] = set()

    def unique(self, name: str, taken: set[str]) -> str:
        found, k = name, 1
        while found in taken:
            k += 1
            found = f"{name}_{k}"
        taken.add(found)
        return found

    def initializer(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name, self.names)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, attributes: dict) -> str:
        node_name = self.unique(name, self.node_names)
        output = self.unique(node_name, self.names)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=node_name, **attributes))
        return output

    def rename(self, old: str, new: str) -> None:
        """Make tensor `old` be called `new` everywhere (the graph's output)."""
        for node in self.nodes:
            for names in (node.input, node.output):
                for k, name in enumerate(names):
                    if name == old:
                        names[k] = new


def has_onnx_lowering(layer: Layer) -> bool:
    return type(layer).onnx_nodes is not Layer.onnx_nodes


def missing_lowerings(net: Any, providers: dict[str, str]) -> list[str]:
    """A description of every layer that cannot be lowered, with the distribution to ask."""

    registry = get_registry()
    found = []
    for layer in net.layers:
        if has_onnx_lowering(layer):
            continue
        kind = layer.config.type
        provider = providers.get(kind) or (registry.provider(kind) if kind in registry.types else "?")
        found.append(f"layer {layer.name!r} (type {kind!r}, provided by {provider})")
    return found


def onnx_model(bundle: Any, *, softmax: bool = False) -> Any:
    """The ONNX ModelProto of a loaded bundle's network, checked."""
    onnx = require("onnx")
    net = bundle.network
    missing = missing_lowerings(net, bundle.providers)
    if missing:
        raise InterchangeError(
            "cannot export to ONNX: no ONNX lowering (Layer.onnx_nodes) for "
            + "; ".join(missing)
            + "; the distribution providing a type must implement it (see docs/plugins.md)"
        )
    graph = Graph(onnx)
    outputs = {-1: INPUT}
    for index, layer in enumerate(net.layers):
        inputs = [outputs[source] for source in layer.sources]
        result = layer.onnx_nodes(LayerNodes(graph, layer), inputs)
        if not isinstance(result, str):
            raise InterchangeError(
                f"layer {layer.name!r} ({layer.config.type}): onnx_nodes returned {type(result).__name__}, "
                "expected the name of its output"
            )
        outputs[index] = result
    ends_with_softmax = net.layers[-1].config.type == "softmax"
    output = PROBABILITIES if ends_with_softmax else LOGITS
    graph.rename(outputs[len(net.layers) - 1], output)
    classes = net.output_shape[0]
    tensor = onnx.helper.make_tensor_value_info
    outputs_info = [tensor(output, onnx.TensorProto.FLOAT, [BATCH, classes])]
    if softmax and not ends_with_softmax:
        graph.nodes.append(
            onnx.helper.make_node("Softmax", [LOGITS], [PROBABILITIES], name=PROBABILITIES, axis=1)
        )
        outputs_info.append(tensor(PROBABILITIES, onnx.TensorProto.FLOAT, [BATCH, classes]))
    onnx_graph = onnx.helper.make_graph(
        graph.nodes,
        net.name,
        [tensor(INPUT, onnx.TensorProto.FLOAT, [BATCH, *net.input_shape])],
        outputs_info,
        initializer=graph.initializers,
        doc_string=f"cnntool network {net.name!r} from {bundle.path.name}",
    )

    model = onnx.helper.make_model(
        onnx_graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="cnntool",
        producer_version=__version__,
        doc_string=f"exported by cnntool {__version__} from {bundle.path.name} ({bundle.digest})",
    )
    onnx.helper.set_model_props(model, bundle_metadata(bundle))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise InterchangeError(
            f"cannot export to ONNX: the graph does not pass the ONNX checker: {exc}"
        ) from None
    return model


def export_onnx(bundle: Any, out: str | os.PathLike, *, softmax: bool = False) -> dict:
    """Write a loaded bundle's network to `out` as ONNX; return what was written."""

    model = onnx_model(bundle, softmax=softmax)
    data = model.SerializeToString()
    path = atomic_write(out, data)
    return {
        "path": str(path),
        "format": "onnx",
        "bytes": len(data),
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "inputs": [value.name for value in model.graph.input],
        "outputs": [value.name for value in model.graph.output],
        "nodes": len(model.graph.node),
        "initializers": len(model.graph.initializer),
        "digest": bundle.digest,
    }
