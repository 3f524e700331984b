"""Depthwise 2-D convolution: each input channel gets its own `depth_multiplier` filters.

This is PyTorch's `nn.Conv2d(C, C * m, k, groups=C)` and Keras's `DepthwiseConv2D`: the
weight has PyTorch's layout `(C * m, 1, kh, kw)`, and output channel `o` reads input channel
`o // m`. Followed by a 1x1 `conv2d` it makes the depthwise-separable block of MobileNet,
with far fewer parameters and FLOPs than a full convolution.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from cnntool.layers import (
    GRAD_OUT,
    Array,
    Call,
    Layer,
    LayerConfig,
    Shape,
    ShapeError,
    X,
    buf,
    grad,
    padding_sides,
    pair,
    param,
    scratch,
)
from cnntool_extras import kernels

PositiveSize = Annotated[int, Field(ge=1, le=4096)]
SizeOrPair = PositiveSize | tuple[PositiveSize, PositiveSize]
Padding = Annotated[int, Field(ge=0, le=4096)]


class DepthwiseConv2DConfig(LayerConfig):
    type: Literal["depthwise_conv2d"] = "depthwise_conv2d"
    kernel_size: SizeOrPair = Field(description="Window size: an int or [height, width].")
    stride: SizeOrPair = 1
    padding: Padding | tuple[Padding, Padding] | Literal["same", "valid"] = Field(
        default=0,
        description='Zeros added on each side: an int, [height, width], "valid" (0) or "same" '
        "(output size ceil(input / stride), extra padding at the bottom and right, as conv2d).",
    )
    depth_multiplier: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1, description="Filters per input channel; the output has channels * depth_multiplier."
    )
    use_bias: bool = True


class DepthwiseConv2D(Layer):
    """y[n, o] = b[o] + W[o, 0] ⋆ x[n, o // m], with W of shape (C * m, 1, kh, kw)."""

    Config = DepthwiseConv2DConfig
    config: DepthwiseConv2DConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        """Configs and input shapes that `cnntool plugin check` runs the conformance checks on."""
        return [
            ({"type": "depthwise_conv2d", "kernel_size": 3}, (2, 6, 6)),
            (
                {"type": "depthwise_conv2d", "kernel_size": [3, 2], "stride": 2, "padding": "same"},
                (3, 7, 6),
            ),
            (
                {"type": "depthwise_conv2d", "kernel_size": 2, "depth_multiplier": 2, "use_bias": False},
                (2, 5, 5),
            ),
        ]

    def padding(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) zeros added around each image, by conv2d's rule."""
        return padding_sides(
            input_shape[1], input_shape[2], pair(self.config.kernel_size), pair(self.config.stride),
            self.config.padding,
        )  # fmt: skip

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise ShapeError(
                f"expected an image input (channels, height, width), received shape {tuple(input_shape)}"
            )
        channels, height, width = input_shape
        kh, kw = pair(self.config.kernel_size)
        sh, sw = pair(self.config.stride)
        top, left, bottom, right = self.padding(input_shape)
        if kh > height + top + bottom or kw > width + left + right:
            raise ShapeError(
                f"kernel_size {kh}x{kw} is larger than its input {height}x{width} padded to "
                f"{height + top + bottom}x{width + left + right}; use a smaller kernel or more padding"
            )
        out_h = (height + top + bottom - kh) // sh + 1
        out_w = (width + left + right - kw) // sw + 1
        return (channels * self.config.depth_multiplier, out_h, out_w)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        out_channels = input_shape[0] * self.config.depth_multiplier
        shapes: dict[str, Shape] = {"weight": (out_channels, 1, *pair(self.config.kernel_size))}
        if self.config.use_bias:
            shapes["bias"] = (out_channels,)
        return shapes

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def scratch_arrays(self) -> dict[str, Array]:
        # Stands in for the bias (and its gradient) when use_bias is false, so the kernels
        # keep one signature.
        return {} if self.config.use_bias else {"no_bias": Array((self.output_shape[0],))}

    def common(self) -> dict:
        """Arguments both kernels take."""
        (stride_h, stride_w), (top, left, _, _) = pair(self.config.stride), self.padding(self.input_shape)
        return {"weight": param("weight"), "use_bias": self.config.use_bias, "stride_h": stride_h,
                "stride_w": stride_w, "pad_top": top, "pad_left": left}  # fmt: skip

    def forward_calls(self, training: bool) -> list[Call]:
        bias = param("bias") if self.config.use_bias else scratch("no_bias")
        return [Call(kernels.depthwise_conv2d_forward, x=X, bias=bias, **self.common(), out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        grad_bias = grad("bias") if self.config.use_bias else scratch("no_bias")
        return [
            Call(kernels.depthwise_conv2d_backward, grad_out=GRAD_OUT, x=X, **self.common(),
                 need_input_grad=need_grad_x, grad_weight=grad("weight"), grad_bias=grad_bias,
                 grad_x=buf("grad_x"))
        ]  # fmt: skip

    def onnx_nodes(self, onnx, inputs: list[str]) -> str:
        """Conv with one group per input channel and explicit pads (top, left, bottom, right)."""
        weights = [onnx.param("weight"), *([onnx.param("bias")] if self.config.use_bias else [])]
        return onnx.node(
            "Conv", [inputs[0], *weights], kernel_shape=pair(self.config.kernel_size),
            strides=pair(self.config.stride), pads=self.padding(self.input_shape), group=self.input_shape[0],
        )  # fmt: skip

    def flops(self, input_shape: Shape) -> int:
        out_channels, out_h, out_w = self.compute_output_shape(input_shape)
        kh, kw = pair(self.config.kernel_size)
        return out_channels * out_h * out_w * (2 * kh * kw + (1 if self.config.use_bias else 0))
