"""Merge layers: where the branches of a graph network meet.

`add` sums two or more inputs of one shape (a ResNet shortcut); `concat` joins two or more
images of equal height and width along the channel axis (Inception, DenseNet). Both read
the layers named in their `inputs`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from cnntool.kernels.merge import add_forward, add_into, concat_backward, concat_forward
from cnntool.layers.base import GRAD_OUT, Array, Call, Layer, LayerConfig, Ref, Shape, ShapeError, buf, xs

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class AddConfig(LayerConfig):
    type: Literal["add"] = "add"


class ConcatConfig(LayerConfig):
    type: Literal["concat"] = "concat"


class Add(Layer):
    """y = x_0 + x_1 + ... + x_k; dL/dx_i = dL/dy for every input.

    Forward: `add_forward` for the first two inputs, `add_into` for each further one.
    Backward runs no kernel: every input's gradient is the incoming gradient itself.
    """

    Config = AddConfig
    multi_input = True
    arity = (2, None)

    @classmethod
    def examples(cls) -> list[tuple[dict, tuple[Shape, ...]]]:
        """Configs `cnntool plugin check` runs the conformance checks on."""
        return [({"type": "add"}, ((2, 4, 5), (2, 4, 5))), ({"type": "add"}, ((6,), (6,), (6,)))]

    def compute_output_shape(self, input_shape: tuple[Shape, ...]) -> Shape:  # type: ignore[override]  # multi_input: one shape per input (Layer.build)
        first = input_shape[0]
        for k, shape in enumerate(input_shape[1:], start=1):
            if shape != first:
                raise ShapeError(
                    f"inputs must have one shape; input 0 has {first}, input {k} has {shape}"
                    + projection_hint(first, shape, k)
                )
        return first

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        calls = [Call(add_forward, a=xs(0), b=xs(1), out=buf("out"))]
        calls += [Call(add_into, out=buf("out"), a=xs(k)) for k in range(2, len(self.input_shape))]
        return calls

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        return []

    def backward_results(self) -> list[Ref]:
        return [GRAD_OUT] * len(self.input_shape)

    def flops(self, input_shape: tuple[Shape, ...]) -> int:  # type: ignore[override]  # multi_input: one shape per input
        return math.prod(input_shape[0]) * (len(input_shape) - 1)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """Add for two inputs, Sum (ONNX's n-ary add) for more."""
        return onnx.node("Add" if len(inputs) == 2 else "Sum", inputs)


def projection_hint(first: Shape, other: Shape, k: int) -> str:
    """How a ResNet matches a shortcut to its block: a 1x1 convolution with a stride, on the
    input with the larger image, to the other's channels and size."""
    if len(first) != 3 or len(other) != 3:
        return ""
    source, target, which = (other, first, k) if other[1] >= first[1] else (first, other, 0)
    stride = -(-source[1] // target[1])
    if -(-source[1] // stride) != target[1] or -(-source[2] // stride) != target[2]:
        return ""
    move = f', "stride": {stride}' if stride > 1 else ""
    return (
        f'; project input {which} with {{"type": "conv2d", "filters": {target[0]}, "kernel_size": 1{move}}} '
        "on its branch"
    )


class Concat(Layer):
    """y = [x_0, x_1, ..., x_k] along channels; dL/dx_i = the channels of dL/dy that x_i
    filled. Forward copies each input into its channels (`concat_forward`), backward copies
    each input's channels of the gradient out (`concat_backward`)."""

    Config = ConcatConfig
    multi_input = True
    arity = (2, None)

    @classmethod
    def examples(cls) -> list[tuple[dict, tuple[Shape, ...]]]:
        """Configs `cnntool plugin check` runs the conformance checks on."""
        return [({"type": "concat"}, ((2, 4, 5), (3, 4, 5))), ({"type": "concat"}, ((1, 3, 3),) * 3)]

    def compute_output_shape(self, input_shape: tuple[Shape, ...]) -> Shape:  # type: ignore[override]  # multi_input: one shape per input (Layer.build)
        for k, shape in enumerate(input_shape):
            if len(shape) != 3:
                raise ShapeError(
                    f"joins images along channels: expected (channels, height, width) inputs, "
                    f"input {k} has shape {shape}"
                )
        size = input_shape[0][1:]
        for k, shape in enumerate(input_shape[1:], start=1):
            if shape[1:] != size:
                raise ShapeError(
                    f"inputs must have equal height and width; input 0 is {size[0]}x{size[1]} "
                    f"{input_shape[0]}, input {k} is {shape[1]}x{shape[2]} {shape}"
                )
        return (sum(shape[0] for shape in input_shape), *size)

    def starts(self) -> list[int]:
        """The first output channel of each input."""
        firsts, channel = [], 0
        for shape in self.input_shape:
            firsts.append(channel)
            channel += shape[0]
        return firsts

    def buffers(self) -> dict[str, Array]:
        arrays = {"out": Array(self.output_shape)}
        for k, shape in enumerate(self.input_shape):
            arrays[f"grad_x{k}"] = Array(shape)
        return arrays

    def forward_calls(self, training: bool) -> list[Call]:
        return [
            Call(concat_forward, x=xs(k), start=start, out=buf("out"))
            for k, start in enumerate(self.starts())
        ]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        return [
            Call(concat_backward, grad_out=GRAD_OUT, start=start, grad_x=buf(f"grad_x{k}"))
            for k, start in enumerate(self.starts())
        ]

    def backward_results(self) -> list[Ref]:
        return [buf(f"grad_x{k}") for k in range(len(self.input_shape))]

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        return onnx.node("Concat", inputs, axis=1)
