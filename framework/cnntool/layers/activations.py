"""Saturating activations: sigmoid and tanh, elementwise on any input shape."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from cnntool.kernels.activations_extra import sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward
from cnntool.layers.base import GRAD_OUT, Array, Call, Layer, LayerConfig, Shape, X, buf

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class SigmoidConfig(LayerConfig):
    type: Literal["sigmoid"] = "sigmoid"


class TanhConfig(LayerConfig):
    type: Literal["tanh"] = "tanh"


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)); dL/dx = g y (1 - y), from the output.

    Kernels (cnntool.kernels.activations_extra): sigmoid_forward, sigmoid_backward."""

    Config: ClassVar[type[LayerConfig]] = SigmoidConfig  # Tanh has its own
    kernels = (sigmoid_forward, sigmoid_backward)
    onnx_op = "Sigmoid"

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(self.kernels[0], x=X, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        return [Call(self.kernels[1], grad_out=GRAD_OUT, out=buf("out"), grad_x=buf("grad_x"))]

    def flops(self, input_shape: Shape) -> int:
        return 4 * math.prod(input_shape)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        return onnx.node(self.onnx_op, inputs)


class Tanh(Sigmoid):
    """y = tanh(x); dL/dx = g (1 - y²), from the output.

    Kernels (cnntool.kernels.activations_extra): tanh_forward, tanh_backward."""

    Config = TanhConfig
    kernels = (tanh_forward, tanh_backward)
    onnx_op = "Tanh"
