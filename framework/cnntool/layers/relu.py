"""Rectified linear unit."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from cnntool.kernels import activation as kernels
from cnntool.layers.base import Layer, LayerConfig, Shape


class ReLUConfig(LayerConfig):
    type: Literal["relu"] = "relu"


class ReLU(Layer):
    """y = max(x, 0); dy/dx = 1 where x > 0, else 0."""

    Config = ReLUConfig

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        out = self.buffer("out", x.shape)
        kernels.relu_forward(x, out)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self.buffer("grad_x", grad_out.shape)
        kernels.relu_backward(grad_out, self._buffers["out"], grad_x)
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)
