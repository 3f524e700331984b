"""Softmax over the features of a flat input."""

from __future__ import annotations

from typing import Literal

import numpy as np

from cnntool.kernels import activation as kernels
from cnntool.layers.base import Layer, LayerConfig, Shape, ShapeError


class SoftmaxConfig(LayerConfig):
    type: Literal["softmax"] = "softmax"


class Softmax(Layer):
    """y_k = exp(x_k) / sum_j exp(x_j); dx = y * (g - sum_k g_k y_k).

    As the last layer of a network it is the classifier head: training then computes the
    cross-entropy from the logits that feed it (numerically stable), as Keras does.
    """

    Config = SoftmaxConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ShapeError(
                f"expected a flat input (features,), received shape {tuple(input_shape)}; "
                'add {"type": "flatten"} before it'
            )
        return input_shape

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        out = self.buffer("out", x.shape)
        kernels.softmax_forward(x, out)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self.buffer("grad_x", grad_out.shape)
        kernels.softmax_backward(grad_out, self._buffers["out"], grad_x)
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        return 4 * input_shape[0]
