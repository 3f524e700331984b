"""Max pooling over square or rectangular windows."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from cnntool.kernels import pool as kernels
from cnntool.layers.base import Layer, LayerConfig, Shape, ShapeError, expect_image, pair

Size = Annotated[int, Field(ge=1, le=4096)]


class MaxPool2DConfig(LayerConfig):
    type: Literal["maxpool2d"] = "maxpool2d"
    pool_size: Size | tuple[Size, Size] = 2
    stride: Size | tuple[Size, Size] | None = Field(
        default=None, description="Step between windows; defaults to pool_size."
    )


class MaxPool2D(Layer):
    """y[n, c, p, q] = max of x[n, c] over the window at (p*stride, q*stride)."""

    Config = MaxPool2DConfig
    config: MaxPool2DConfig

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

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        shape = (x.shape[0], *self.output_shape)
        out = self.buffer("out", shape)
        argmax = self.buffer("argmax", shape, np.int32)
        ph, pw, sh, sw = self.window
        kernels.maxpool2d_forward(x, ph, pw, sh, sw, out, argmax)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self.buffer("grad_x", (grad_out.shape[0], *self.input_shape))
        kernels.maxpool2d_backward(grad_out, self._buffers["argmax"], grad_x)
        return grad_x

    def flops(self, input_shape: Shape) -> int:
        ph, pw = pair(self.config.pool_size)
        channels, oh, ow = self.compute_output_shape(input_shape)
        return channels * oh * ow * (ph * pw - 1)
