"""Parametric ReLU: a learned slope for negative inputs, one per channel (PyTorch's nn.PReLU)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from cnntool.layers import GRAD_OUT, Array, Call, Layer, LayerConfig, Shape, X, buf, grad, param
from cnntool_extras import kernels


class PReLUConfig(LayerConfig):
    type: Literal["prelu"] = "prelu"
    shared: bool = Field(
        default=False,
        description="One slope for every channel (PyTorch's nn.PReLU()) instead of one per channel "
        "(nn.PReLU(num_parameters=C)).",
    )
    init: float = Field(default=0.25, allow_inf_nan=False, description="Initial slope (PyTorch's 0.25).")


class PReLU(Layer):
    """y = x if x > 0 else weight[c] * x, c the channel (axis 1 of the batch, as in PyTorch);
    dy/dx = 1 if x > 0 else weight[c];  dy/dweight[c] = x where x <= 0, else 0."""

    Config = PReLUConfig
    config: PReLUConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        """Configs and input shapes that `cnntool plugin check` runs the conformance checks on."""
        return [
            ({"type": "prelu"}, (3, 5, 5)),
            ({"type": "prelu", "shared": True, "init": 0.1}, (4, 3, 3)),
            ({"type": "prelu"}, (12,)),
        ]

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {"weight": (1,) if self.config.shared else (input_shape[0],)}

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return np.full(shape, self.config.init, np.float32)

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    @property
    def spatial(self) -> int:
        """Elements per channel of one example: every axis after the channel axis."""
        return math.prod(self.input_shape[1:])

    def forward_calls(self, training: bool) -> list[Call]:
        return [
            Call(kernels.prelu_forward, x=X, weight=param("weight"), spatial=self.spatial, out=buf("out"))
        ]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        # The slope's gradient is needed even when dL/dx is not (the first layer).
        return [
            Call(kernels.prelu_backward, grad_out=GRAD_OUT, x=X, weight=param("weight"), spatial=self.spatial,
                 need_input_grad=need_grad_x, grad_weight=grad("weight"), grad_x=buf("grad_x"))
        ]  # fmt: skip

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx, inputs: list[str]) -> str:
        """ONNX's PRelu broadcasts the slope from the last axis: one slope per channel is
        stored as (C, 1, 1) for an image, (C,) for a flat input, and a shared one as (1,)."""
        slopes = self.params["weight"].shape[0]
        shape = (slopes, *(1,) * (len(self.input_shape) - 1)) if slopes > 1 else (1,)
        return onnx.node("PRelu", [inputs[0], onnx.param("weight", shape)])
