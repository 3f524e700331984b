"""Dropout (Srivastava et al., 2014), inverted as in PyTorch: in training each element is
zeroed with probability `rate` and the survivors are scaled by 1 / (1 - rate), so inference
is the identity.

The masks are a hash of the network's seed, the training step, the layer's name, the
example's index in the batch and the element's index (see cnntool.kernels.dropout):
reproducible, independent of how a batch is cut across threads, and resumable.
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from cnntool.kernels.dropout import dropout_backward, dropout_forward
from cnntool.layers.base import (
    GRAD_OUT,
    OFFSET,
    RANDOM,
    Array,
    Call,
    Layer,
    LayerConfig,
    Shape,
    X,
    buf,
    scratch,
)

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class DropoutConfig(LayerConfig):
    type: Literal["dropout"] = "dropout"
    rate: Annotated[float, Field(ge=0, lt=1, description="Probability of zeroing each element.")] = 0.5


class Dropout(Layer):
    """Training: y = x * mask / (1 - rate), mask[i] ~ Bernoulli(1 - rate); dx = g * mask / (1 - rate).
    Inference: y = x, dx = g.

    Kernels (cnntool.kernels.dropout): dropout_forward draws the mask from the network's
    random counter and the example's offset in the batch (see the module docs) and keeps
    it; dropout_backward applies it."""

    Config = DropoutConfig
    config: DropoutConfig

    @property
    def salt(self) -> int:
        """Makes the masks of two dropout layers of one network independent."""
        return zlib.crc32(self.name.encode())

    def buffers(self) -> dict[str, Array]:
        return {
            "out": Array(self.output_shape),
            "mask": Array(self.output_shape),
            "grad_x": Array(self.input_shape),
        }

    def scratch_arrays(self) -> dict[str, Array]:
        return {"mode": Array((1,))}  # whether the last forward was in training mode

    def forward_calls(self, training: bool) -> list[Call]:
        call = Call(
            dropout_forward, x=X, rate=float(self.config.rate), salt=self.salt, random=RANDOM, offset=OFFSET,
            training=training, mode=scratch("mode"), mask=buf("mask"), out=buf("out"),
        )  # fmt: skip
        return [call]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        if not need_grad_x:
            return []
        call = Call(
            dropout_backward, grad_out=GRAD_OUT, mask=buf("mask"), rate=float(self.config.rate),
            mode=scratch("mode"), grad_x=buf("grad_x"),
        )  # fmt: skip
        return [call]

    def flops(self, input_shape: Shape) -> int:
        return math.prod(input_shape)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        return inputs[0]  # the identity at inference: left out of the graph
