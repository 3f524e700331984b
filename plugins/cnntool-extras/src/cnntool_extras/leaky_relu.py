"""Leaky rectified linear unit, as PyTorch's nn.LeakyReLU."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from cnntool.layers import GRAD_OUT, Array, Call, Epilogue, Layer, LayerConfig, Shape, X, buf
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

    @property
    def epilogue(self) -> Epilogue:
        """What a convolution before this layer applies in its own kernel instead (in a
        compiled plan), like a ReLU: y and dy/dx for one element."""
        slope = self.config.negative_slope
        # increasing: a max-pool after it may pool first (inference fuses all three).
        return Epilogue(
            kernels.leaky_relu_value, kernels.leaky_relu_derivative, a=slope, increasing=slope >= 0
        )

    def buffers(self) -> dict[str, Array]:
        """Per-example arrays (shapes without the batch axis): the output and dL/dx."""
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        # A scalar passed as np.float32 keeps the kernel's arithmetic in float32, compiled
        # and layer by layer alike.
        slope = np.float32(self.config.negative_slope)
        return [Call(kernels.leaky_relu_forward, x=X, negative_slope=slope, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:  # the first layer of a network: nobody needs dL/dx
            return []
        slope = np.float32(self.config.negative_slope)
        return [
            Call(
                kernels.leaky_relu_backward,
                grad_out=GRAD_OUT,
                x=X,
                negative_slope=slope,
                grad_x=buf("grad_x"),
            )
        ]

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx, inputs: list[str]) -> str:
        """ONNX's LeakyRelu, its `alpha` the negative slope."""
        return onnx.node("LeakyRelu", inputs, alpha=float(self.config.negative_slope))
