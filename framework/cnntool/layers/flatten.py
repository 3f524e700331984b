"""Flatten (C, H, W) to (C*H*W,), in C order, as PyTorch's nn.Flatten does."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from cnntool.layers.base import Layer, LayerConfig, Shape

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class FlattenConfig(LayerConfig):
    type: Literal["flatten"] = "flatten"


class Flatten(Layer):
    """y = x reshaped to (N, features); dL/dx = g reshaped to (N, C, H, W). Forward and
    backward are views (`view = True`): no kernel, no copy, because a C-contiguous reshape
    moves no data."""

    Config = FlattenConfig
    view = True

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        return onnx.node("Flatten", inputs, axis=1)
