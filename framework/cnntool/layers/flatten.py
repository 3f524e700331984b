"""Flatten (C, H, W) to (C*H*W,), in C order, as PyTorch's nn.Flatten does."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from cnntool.layers.base import Layer, LayerConfig, Shape


class FlattenConfig(LayerConfig):
    type: Literal["flatten"] = "flatten"


class Flatten(Layer):
    """y = x reshaped to (N, features). Forward and backward are views: no kernel, no copy,
    because a C-contiguous reshape moves no data."""

    Config = FlattenConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.reshape(grad_out.shape[0], *self.input_shape)
