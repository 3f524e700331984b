"""Fully connected layer on flat inputs."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from cnntool.kernels import dense as kernels
from cnntool.layers.base import INITIALIZERS, Layer, LayerConfig, Shape, ShapeError


class DenseConfig(LayerConfig):
    type: Literal["dense"] = "dense"
    units: Annotated[int, Field(ge=1, le=1 << 20, description="Number of output features.")]
    use_bias: bool = True
    init: Literal["he_normal", "glorot_uniform"] = "he_normal"


class Dense(Layer):
    """y = x @ W.T + b, with W of shape (units, in_features) as in PyTorch's Linear."""

    Config = DenseConfig
    config: DenseConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ShapeError(
                f"expected a flat input (features,), received shape {tuple(input_shape)}; "
                'add {"type": "flatten"} before it'
            )
        return (self.config.units,)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (self.config.units, input_shape[0])}
        if self.config.use_bias:
            shapes["bias"] = (self.config.units,)
        return shapes

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        if name == "weight":
            return INITIALIZERS[self.config.init](shape, rng)
        return np.zeros(shape, np.float32)

    def build(self, input_shape: Shape, rng: np.random.Generator | None) -> Shape:
        output_shape = super().build(input_shape, rng)
        self._no_bias = np.zeros(self.config.units, np.float32)
        return output_shape

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        out = self.buffer("out", (x.shape[0], self.config.units))
        kernels.dense_forward(
            x,
            self.params["weight"],
            self.params.get("bias", self._no_bias),
            self.config.use_bias,
            out,
        )
        self._x = x
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self.buffer("grad_x", self._x.shape)
        kernels.dense_backward(
            grad_out,
            self._x,
            self.params["weight"],
            self.config.use_bias,
            self.need_input_grad,
            self.grads["weight"],
            self.grads.get("bias", self._no_bias),
            grad_x,
        )
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        return 2 * input_shape[0] * self.config.units + (self.config.units if self.config.use_bias else 0)
