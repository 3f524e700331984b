"""Leaky rectified linear unit, as PyTorch's nn.LeakyReLU."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from cnntool.layers import Layer, LayerConfig, Shape
from cnntool_extras import kernels


class LeakyReLUConfig(LayerConfig):
    type: Literal["leaky_relu"] = "leaky_relu"
    negative_slope: float = Field(
        default=0.01, allow_inf_nan=False, description="Slope for negative inputs (PyTorch's default 0.01)."
    )


class LeakyReLU(Layer):
    """y = x if x > 0 else negative_slope * x;  dy/dx = 1 if x > 0 else negative_slope."""

    Config = LeakyReLUConfig
    config: LeakyReLUConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        """Configs and input shapes that `cnntool plugin check` runs the conformance checks on."""
        return [
            ({"type": "leaky_relu"}, (3, 6, 6)),
            ({"type": "leaky_relu", "negative_slope": 0.2}, (10,)),
        ]

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        self._x = np.ascontiguousarray(x)
        out = self.buffer("out", x.shape)
        kernels.leaky_relu_forward(self._x, np.float32(self.config.negative_slope), out)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self.buffer("grad_x", grad_out.shape)
        kernels.leaky_relu_backward(
            np.ascontiguousarray(grad_out), self._x, np.float32(self.config.negative_slope), grad_x
        )
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx, inputs: list[str]) -> str:
        """ONNX's LeakyRelu, its `alpha` the negative slope."""
        return onnx.node("LeakyRelu", inputs, alpha=float(self.config.negative_slope))
