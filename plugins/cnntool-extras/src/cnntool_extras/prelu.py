"""Parametric ReLU: a learned slope for negative inputs, one per channel (PyTorch's nn.PReLU)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from cnntool.layers import Layer, LayerConfig, Shape
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

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        # Every element after the channel axis is one position of that channel: (N, C, S).
        self._x = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)
        out = self.buffer("out", x.shape)
        kernels.prelu_forward(self._x, self.params["weight"], out.reshape(self._x.shape))
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self.buffer("grad_x", grad_out.shape)
        kernels.prelu_backward(
            np.ascontiguousarray(grad_out).reshape(self._x.shape),
            self._x,
            self.params["weight"],
            self.need_input_grad,
            self.grads["weight"],
            grad_x.reshape(self._x.shape),
        )
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx, inputs: list[str]) -> str:
        """ONNX's PRelu broadcasts the slope from the last axis: one slope per channel is
        stored as (C, 1, 1) for an image, (C,) for a flat input, and a shared one as (1,)."""
        slopes = self.params["weight"].shape[0]
        shape = (slopes, *(1,) * (len(self.input_shape) - 1)) if slopes > 1 else (1,)
        return onnx.node("PRelu", [inputs[0], onnx.param("weight", shape)])
