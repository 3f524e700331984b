"""A working layer type whose name another distribution claims too."""

from typing import Literal

import numpy as np

from cnntool.layers import Layer, LayerConfig


class SwishConfig(LayerConfig):
    type: Literal["swish"] = "swish"


class Swish(Layer):
    """y = x * sigmoid(x); dy/dx = s + x * s * (1 - s), s = sigmoid(x)."""

    Config = SwishConfig

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        self._x = x
        return x / (1 + np.exp(-x))

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        s = 1 / (1 + np.exp(-self._x))
        return grad_out * (s + self._x * s * (1 - s))
