"""Average pooling over windows, and global average pooling over whole feature maps."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from cnntool.kernels.avgpool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
)
from cnntool.layers.base import GRAD_OUT, Array, Call, Layer, LayerConfig, Shape, X, buf, expect_image
from cnntool.layers.maxpool2d import MaxPool2D, MaxPool2DConfig

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class AvgPool2DConfig(MaxPool2DConfig):
    type: Literal["avgpool2d"] = "avgpool2d"  # type: ignore[assignment]


class AvgPool2D(MaxPool2D):
    """y[n, c, p, q] = mean of x[n, c] over the window at (p*stride, q*stride), as PyTorch's
    AvgPool2d without padding.

    Backward: dL/dx[n, c, h, w] = sum over the windows containing (h, w) of g / window size.
    Kernels (cnntool.kernels.avgpool): avgpool2d_forward, avgpool2d_backward."""

    Config = AvgPool2DConfig
    reduction = "mean"

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        ph, pw, sh, sw = self.window
        return [Call(avgpool2d_forward, x=X, ph=ph, pw=pw, sh=sh, sw=sw, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        ph, pw, sh, sw = self.window
        return [Call(avgpool2d_backward, grad_out=GRAD_OUT, ph=ph, pw=pw, sh=sh, sw=sw, grad_x=buf("grad_x"))]

    def flops(self, input_shape: Shape) -> int:
        ph, pw, _, _ = self.window
        channels, oh, ow = self.compute_output_shape(input_shape)
        return channels * oh * ow * ph * pw


class GlobalAvgPool2DConfig(LayerConfig):
    type: Literal["global_avgpool2d"] = "global_avgpool2d"


class GlobalAvgPool2D(Layer):
    """y[n, c] = mean of x[n, c] over height and width: (C, H, W) -> (C,), flat, so a dense
    layer can follow directly (PyTorch's AdaptiveAvgPool2d(1) followed by Flatten).

    Backward: dL/dx[n, c, h, w] = g[n, c] / (H * W). Kernels (cnntool.kernels.avgpool):
    global_avgpool2d_forward, global_avgpool2d_backward."""

    Config = GlobalAvgPool2DConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        channels, _, _ = expect_image(self, input_shape)
        return (channels,)

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(global_avgpool2d_forward, x=X, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        return [Call(global_avgpool2d_backward, grad_out=GRAD_OUT, grad_x=buf("grad_x"))]

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """GlobalAveragePool keeps (N, C, 1, 1); Flatten makes it the layer's (N, C)."""
        return onnx.node("Flatten", [onnx.node("GlobalAveragePool", inputs)], axis=1)
