"""Softmax over the features of a flat input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from cnntool.kernels.activation import softmax_backward, softmax_forward
from cnntool.layers.base import GRAD_OUT, Array, Call, Layer, LayerConfig, Shape, ShapeError, X, buf

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class SoftmaxConfig(LayerConfig):
    type: Literal["softmax"] = "softmax"


class Softmax(Layer):
    """y_k = exp(x_k) / sum_j exp(x_j); dx = y * (g - sum_k g_k y_k).

    As the last layer of a network it is the classifier head: training then computes the
    cross-entropy from the logits that feed it (numerically stable), as Keras does.
    Kernels (cnntool.kernels.activation): softmax_forward (max-shifted), softmax_backward.
    """

    Config = SoftmaxConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ShapeError(
                f"expected a flat input (features,), received shape {tuple(input_shape)}; "
                'add {"type": "flatten"} before it'
            )
        return input_shape

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(softmax_forward, x=X, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        return [Call(softmax_backward, grad_out=GRAD_OUT, out=buf("out"), grad_x=buf("grad_x"))]

    def flops(self, input_shape: Shape) -> int:
        return 4 * input_shape[0]

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        return onnx.node("Softmax", inputs, axis=1)
