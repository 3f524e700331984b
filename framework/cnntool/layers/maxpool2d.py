"""Max pooling over square or rectangular windows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from cnntool.kernels.pool import maxpool2d_backward, maxpool2d_forward
from cnntool.layers.base import (
    GRAD_OUT,
    Array,
    Call,
    Layer,
    LayerConfig,
    Shape,
    ShapeError,
    X,
    buf,
    expect_image,
    pair,
)

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder

Size = Annotated[int, Field(ge=1, le=4096)]


class MaxPool2DConfig(LayerConfig):
    type: Literal["maxpool2d"] = "maxpool2d"
    pool_size: Size | tuple[Size, Size] = 2
    stride: Size | tuple[Size, Size] | None = Field(
        default=None, description="Step between windows; defaults to pool_size."
    )


class MaxPool2D(Layer):
    """y[n, c, p, q] = max of x[n, c] over the window at (p*stride, q*stride), no padding.

    Backward: each g[n, c, p, q] goes to the input its window's maximum came from (the first
    one on ties, as PyTorch), summed where windows overlap; elsewhere dL/dx is zero.
    Kernels (cnntool.kernels.pool): maxpool2d_forward also writes `code`, the position of
    each maximum inside its window, which maxpool2d_backward scatters by. For inference in a
    compiled plan, a 2x2 stride-2 pool after conv2d -> relu is computed by the convolution's
    kernel (see Conv2D).
    """

    Config: ClassVar[type[MaxPool2DConfig]] = MaxPool2DConfig  # AvgPool2D has its own
    config: MaxPool2DConfig
    reduction = "max"

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        """Configs `cnntool plugin check` runs the conformance checks on."""
        kind = cls.Config.model_fields["type"].default  # also right for subclasses (avgpool2d)
        return [
            ({"type": kind, "pool_size": 2}, (2, 6, 7)),
            ({"type": kind, "pool_size": 3, "stride": 2}, (2, 7, 7)),
        ]

    @property
    def window(self) -> tuple[int, int, int, int]:
        """(pool height, pool width, stride height, stride width)."""
        ph, pw = pair(self.config.pool_size)
        sh, sw = pair(self.config.stride if self.config.stride is not None else self.config.pool_size)
        return ph, pw, sh, sw

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        channels, height, width = expect_image(self, input_shape)
        ph, pw, sh, sw = self.window
        if ph > height or pw > width:
            raise ShapeError(
                f"pool_size {ph}x{pw} is larger than its input {height}x{width} "
                f"(input shape {tuple(input_shape)})"
            )
        return (channels, (height - ph) // sh + 1, (width - pw) // sw + 1)

    def buffers(self) -> dict[str, Array]:
        return {
            "out": Array(self.output_shape),
            "code": Array(self.output_shape, np.int32),
            "grad_x": Array(self.input_shape),
        }

    def forward_calls(self, training: bool) -> list[Call]:
        ph, pw, sh, sw = self.window
        return [Call(maxpool2d_forward, x=X, ph=ph, pw=pw, sh=sh, sw=sw, out=buf("out"), code=buf("code"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        ph, pw, sh, sw = self.window
        return [
            Call(
                maxpool2d_backward,
                grad_out=GRAD_OUT,
                code=buf("code"),
                ph=ph,
                pw=pw,
                sh=sh,
                sw=sw,
                grad_x=buf("grad_x"),
            )
        ]

    def flops(self, input_shape: Shape) -> int:
        ph, pw = pair(self.config.pool_size)
        channels, oh, ow = self.compute_output_shape(input_shape)
        return channels * oh * ow * (ph * pw - 1)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """MaxPool (AveragePool for avgpool2d), no padding, windows that fit (floor)."""
        ph, pw, sh, sw = self.window
        op = {"max": "MaxPool", "mean": "AveragePool"}[self.reduction]
        return onnx.node(op, inputs, kernel_shape=[ph, pw], strides=[sh, sw], pads=[0, 0, 0, 0])
