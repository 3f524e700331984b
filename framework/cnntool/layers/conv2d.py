"""2-D convolution (cross-correlation, as in PyTorch and Keras), with stride and padding."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from cnntool.kernels import conv as kernels
from cnntool.layers.base import (
    INITIALIZERS,
    Layer,
    LayerConfig,
    Shape,
    ShapeError,
    expect_image,
    pair,
)

PositiveSize = Annotated[int, Field(ge=1, le=4096)]
SizeOrPair = PositiveSize | tuple[PositiveSize, PositiveSize]


class Conv2DConfig(LayerConfig):
    type: Literal["conv2d"] = "conv2d"
    filters: Annotated[int, Field(ge=1, le=65536, description="Number of output channels.")]
    kernel_size: SizeOrPair = Field(description="Window size: an int or [height, width].")
    stride: SizeOrPair = 1
    padding: (
        Annotated[int, Field(ge=0, le=4096)]
        | tuple[Annotated[int, Field(ge=0, le=4096)], Annotated[int, Field(ge=0, le=4096)]]
        | Literal["same", "valid"]
    ) = Field(
        default=0,
        description='Zeros added on each side: an int, [height, width], "valid" (0) or "same" '
        "(output size ceil(input / stride), extra padding at the bottom and right as in "
        "TensorFlow; equal to PyTorch's 'same' at stride 1).",
    )
    use_bias: bool = True
    init: Literal["he_normal", "glorot_uniform"] = "he_normal"


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


class Conv2D(Layer):
    """y[n, o] = b[o] + sum_c W[o, c] ⋆ x[n, c], with W of shape (out, in, kh, kw)."""

    Config = Conv2DConfig
    config: Conv2DConfig

    def padding(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) zeros added around each image."""
        _, height, width = input_shape
        kh, kw = pair(self.config.kernel_size)
        sh, sw = pair(self.config.stride)
        padding = self.config.padding
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            pads = []
            for size, kernel, stride in ((height, kh, sh), (width, kw, sw)):
                out = -(-size // stride)
                pads.append(max((out - 1) * stride + kernel - size, 0))
            return (pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2)
        ph, pw = pair(padding)
        return (ph, pw, ph, pw)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _, height, width = expect_image(self, input_shape)
        kh, kw = pair(self.config.kernel_size)
        sh, sw = pair(self.config.stride)
        top, left, bottom, right = self.padding(input_shape)
        if kh > height + top + bottom or kw > width + left + right:
            raise ShapeError(
                f"kernel_size {kh}x{kw} is larger than its input {height}x{width}"
                + (f" padded to {height + top + bottom}x{width + left + right}" if top or left else "")
                + f" (input shape {tuple(input_shape)}); use a smaller kernel or padding"
            )
        oh = conv_output_size(height, kh, sh, top, bottom)
        ow = conv_output_size(width, kw, sw, left, right)
        return (self.config.filters, oh, ow)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        kh, kw = pair(self.config.kernel_size)
        shapes: dict[str, Shape] = {"weight": (self.config.filters, input_shape[0], kh, kw)}
        if self.config.use_bias:
            shapes["bias"] = (self.config.filters,)
        return shapes

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        if name == "weight":
            return INITIALIZERS[self.config.init](shape, rng)
        return np.zeros(shape, np.float32)

    def build(self, input_shape: Shape, rng: np.random.Generator | None) -> Shape:
        output_shape = super().build(input_shape, rng)
        self._pads = self.padding(self.input_shape)
        self._strides = pair(self.config.stride)
        # Stands in for the bias when use_bias is false, so the kernels keep one signature.
        self._no_bias = np.zeros(self.config.filters, np.float32)
        return output_shape

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        n = x.shape[0]
        filters, oh, ow = self.output_shape
        weight = self.params["weight"]
        rows = weight.shape[1] * weight.shape[2] * weight.shape[3]
        cols = self.buffer("cols", (rows, n * oh * ow))
        out_cols = self.buffer("out_cols", (filters, n * oh * ow))
        out = self.buffer("out", (n, filters, oh, ow))
        sh, sw = self._strides
        top, left = self._pads[0], self._pads[1]
        kernels.conv2d_forward(
            x,
            weight,
            self.params.get("bias", self._no_bias),
            self.config.use_bias,
            sh,
            sw,
            top,
            left,
            cols,
            out_cols,
            out,
        )
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        n = grad_out.shape[0]
        weight = self.params["weight"]
        cols = self._buffers["cols"]
        grad_cols_out = self.buffer("grad_cols_out", (weight.shape[0], cols.shape[1]))
        grad_cols = self.buffer("grad_cols", cols.shape)
        grad_x = self.buffer("grad_x", (n, *self.input_shape))
        sh, sw = self._strides
        top, left = self._pads[0], self._pads[1]
        kernels.conv2d_backward(
            grad_out,
            weight,
            cols,
            self.config.use_bias,
            self.need_input_grad,
            sh,
            sw,
            top,
            left,
            grad_cols_out,
            grad_cols,
            self.grads["weight"],
            self.grads.get("bias", self._no_bias),
            grad_x,
        )
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        filters, oh, ow = self.compute_output_shape(input_shape)
        kh, kw = pair(self.config.kernel_size)
        macs = filters * oh * ow * input_shape[0] * kh * kw
        return 2 * macs + (filters * oh * ow if self.config.use_bias else 0)
