"""Batch normalisation (Ioffe & Szegedy, 2015) as PyTorch's BatchNorm2d and BatchNorm1d.

Each channel (each feature, after a dense layer) is normalised to zero mean and unit
variance, then scaled by `weight` and shifted by `bias`. In training the statistics are the
batch's, and exponential running averages of them are kept in `state` (`running_mean`,
`running_var`); inference uses those. Because training couples the examples of a batch,
networks holding batch normalisation are never cut into pieces across threads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

from cnntool.kernels.norm import batchnorm_backward, batchnorm_forward
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
    grad,
    param,
    scratch,
    state,
)

if TYPE_CHECKING:
    from cnntool.interchange.onnx_export import OnnxBuilder

Momentum = Annotated[
    float,
    Field(ge=0, le=1, description="Weight of the batch in the running statistics (PyTorch's momentum)."),
]
Epsilon = Annotated[float, Field(gt=0, le=1, description="Added to the variance before the square root.")]


class BatchNorm2DConfig(LayerConfig):
    type: Literal["batchnorm2d"] = "batchnorm2d"
    momentum: Momentum = 0.1
    eps: Epsilon = 1e-5


class BatchNorm1DConfig(LayerConfig):
    type: Literal["batchnorm1d"] = "batchnorm1d"
    momentum: Momentum = 0.1
    eps: Epsilon = 1e-5


class BatchNorm2D(Layer):
    """y = weight[c] * (x - mean[c]) / sqrt(var[c] + eps) + bias[c], over (N, H, W) per channel c.

    Training: mean and biased var of the batch; running = (1 - momentum) * running +
    momentum * batch, with the unbiased var. Inference: the running statistics.
    """

    Config = BatchNorm2DConfig
    config: BatchNorm2DConfig
    per_example = False

    def channels(self, input_shape: Shape) -> int:
        return expect_image(self, input_shape)[0]

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        channels = self.channels(input_shape)
        return {"weight": (channels,), "bias": (channels,)}

    def state_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        channels = self.channels(input_shape)
        return {"running_mean": (channels,), "running_var": (channels,)}

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.channels(input_shape)
        return input_shape

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return np.full(shape, 1.0 if name == "weight" else 0.0, np.float32)

    def init_state(self, name: str, shape: Shape) -> np.ndarray:
        return np.full(shape, 1.0 if name == "running_var" else 0.0, np.float32)

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def scratch_arrays(self) -> dict[str, Array]:
        channels = self.channels(self.input_shape)
        # The statistics the last forward used, and whether it was in training mode.
        return {"mean": Array((channels,)), "inv_std": Array((channels,)), "mode": Array((1,))}

    def forward_calls(self, training: bool) -> list[Call]:
        call = Call(
            batchnorm_forward, x=X, weight=param("weight"), bias=param("bias"),
            running_mean=state("running_mean"), running_var=state("running_var"), training=training,
            momentum=float(self.config.momentum), eps=float(self.config.eps), mean=scratch("mean"),
            inv_std=scratch("inv_std"), mode=scratch("mode"), out=buf("out"),
        )  # fmt: skip
        return [call]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        call = Call(
            batchnorm_backward, grad_out=GRAD_OUT, x=X, weight=param("weight"), mean=scratch("mean"),
            inv_std=scratch("inv_std"), mode=scratch("mode"), need_grad_x=need_grad_x,
            grad_weight=grad("weight"), grad_bias=grad("bias"), grad_x=buf("grad_x"),
        )  # fmt: skip
        return [call]

    def flops(self, input_shape: Shape) -> int:
        return 2 * math.prod(input_shape)

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """BatchNormalization in inference form (running statistics); ONNX's momentum is the
        weight of the running value, 1 - PyTorch's."""
        arrays = [onnx.param(key) for key in ("weight", "bias", "running_mean", "running_var")]
        return onnx.node(
            "BatchNormalization", [inputs[0], *arrays], epsilon=float(self.config.eps),
            momentum=1.0 - float(self.config.momentum),
        )  # fmt: skip


class BatchNorm1D(BatchNorm2D):
    """BatchNorm2D for flat inputs (features,), as after a dense layer: each feature is
    normalised over the batch."""

    Config = BatchNorm1DConfig
    config: BatchNorm1DConfig

    def channels(self, input_shape: Shape) -> int:
        if len(input_shape) != 1:
            raise ShapeError(
                f"expected a flat input (features,), received shape {tuple(input_shape)}; "
                'use {"type": "batchnorm2d"} on images'
            )
        return input_shape[0]
