"""Rectified linear unit."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from cnntool.kernels.activation import relu_backward, relu_forward
from cnntool.layers.base import GRAD_OUT, Array, Call, Layer, LayerConfig, Shape, X, buf

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class ReLUConfig(LayerConfig):
    type: Literal["relu"] = "relu"


class ReLU(Layer):
    """y = max(x, 0); dL/dx = g where y > 0, else 0.

    Kernels (cnntool.kernels.activation): relu_forward, relu_backward (which reads the
    output, not the input). In a compiled plan a ReLU reading only a layer that fuses it
    (`epilogue = "relu"`; stride-1 Conv2D) runs inside that layer's kernels instead."""

    Config = ReLUConfig
    epilogue = "relu"  # a convolution before it applies it in its own kernels (Conv2D.fuses)

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(relu_forward, x=X, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        return [Call(relu_backward, grad_out=GRAD_OUT, out=buf("out"), grad_x=buf("grad_x"))]

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        return onnx.node("Relu", inputs)
