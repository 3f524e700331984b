"""Batch normalisation (Ioffe & Szegedy, 2015) as PyTorch's BatchNorm2d and BatchNorm1d.

Each channel (each feature, after a dense layer) is normalised to zero mean and unit
variance, then scaled by `weight` and shifted by `bias`. In training the statistics are the
batch's, and exponential running averages of them are kept in `state` (`running_mean`,
`running_var`); inference uses those. Because training couples the examples of a batch,
the pieces of a batch cut across threads meet at each batch-norm layer (see kernels.norm).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, cast

import numpy as np
from pydantic import Field

from cnntool.kernels.norm import (
    batchnorm_grad_sums,
    batchnorm_grad_x,
    batchnorm_inference,
    batchnorm_moments,
    batchnorm_normalize,
)
from cnntool.layers.base import (
    GRAD_OUT,
    OFFSET,
    Array,
    Call,
    Layer,
    LayerConfig,
    Ref,
    Shape,
    ShapeError,
    Sync,
    X,
    buf,
    expect_image,
    grad,
    param,
    scratch,
    state,
)

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder

Momentum = Annotated[
    float,
    Field(ge=0, le=1, description="Weight of the batch in the running statistics (PyTorch's momentum)."),
]
Epsilon = Annotated[float, Field(gt=0, le=1, description="Added to the variance before the square root.")]


def combine_moments(shares: list[np.ndarray]) -> np.ndarray:
    """The (count, mean, squared deviations) of a batch from those of its pieces, by the
    pairwise update of Chan, Golub and LeVeque (stable, unlike summing squares)."""
    count, mean, squares = shares[0].astype(np.float64)
    for share in shares[1:]:
        other_count, other_mean, other_squares = share.astype(np.float64)
        total = count + other_count
        delta = other_mean - mean
        mean = mean + delta * other_count / total
        squares = squares + other_squares + delta * delta * count * other_count / total
        count = total
    return np.stack([count, mean, squares]).astype(np.float32)


def add_shares(shares: list[np.ndarray]) -> np.ndarray:
    """The sums of a batch: those of its pieces added up (in float64)."""
    return cast(np.ndarray, np.sum(shares, axis=0, dtype=np.float64).astype(np.float32))  # axis=0: an array


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

    Backward, with g = dL/dy, xhat = (x - mean) * inv_std and m = N*H*W values per channel:
    dL/dweight[c] = sum g * xhat, dL/dbias[c] = sum g, and, after a training forward,
    dL/dx = weight * inv_std / m * (m g - sum g - xhat sum g * xhat); after an inference
    forward (statistics constant), dL/dx = weight * inv_std * g.
    Kernels (cnntool.kernels.norm): inference is batchnorm_inference. Training is
    batchnorm_moments (this piece's count, mean and squared deviations), a Sync combining
    the pieces' moments, then batchnorm_normalize; backward is batchnorm_grad_sums, a Sync
    adding the pieces' sums, then batchnorm_grad_x. So a batch cut across threads (one piece
    each) is normalised with the whole batch's statistics (`per_example = False`, `syncs`).
    """

    Config: ClassVar[type[LayerConfig]] = BatchNorm2DConfig  # BatchNorm1D has its own
    config: BatchNorm2DConfig | BatchNorm1DConfig
    per_example = False
    syncs = True

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
        # The statistics the last forward used, whether it was in training mode, and the
        # batch's moments and gradient sums (see kernels.norm).
        return {"mean": Array((channels,)), "inv_std": Array((channels,)), "mode": Array((1,)),
                "moments": Array((3, channels)), "sums": Array((3, channels))}  # fmt: skip

    def fuses(self, activation: Layer) -> bool:
        """A ReLU after it is applied by the normalising kernels as they write, and masks the
        gradient in the backward kernels (see kernels.norm): one pass less each way."""
        return activation.epilogue == "relu"

    def forward_calls(self, training: bool, relu_into: Ref | None = None) -> list[Call | Sync]:
        """Inference: one kernel with the running statistics. Training: this piece's moments,
        the batch's (combined over the pieces), then the normalisation. With `relu_into` (the
        output of a ReLU after it, when the plan fuses the two) max(y, 0) is written there."""
        out = relu_into if relu_into is not None else buf("out")
        common = {"x": X, "weight": param("weight"), "bias": param("bias"),
                  "running_mean": state("running_mean"), "running_var": state("running_var"),
                  "eps": float(self.config.eps), "mean": scratch("mean"), "inv_std": scratch("inv_std"),
                  "mode": scratch("mode"), "relu": relu_into is not None, "out": out}  # fmt: skip
        if not training:
            return [Call(batchnorm_inference, **common)]
        return [
            Call(batchnorm_moments, x=X, moments=scratch("moments")),
            Sync(scratch("moments"), combine_moments),
            Call(batchnorm_normalize, **common, momentum=float(self.config.momentum),
                 moments=scratch("moments"), offset=OFFSET),
        ]  # fmt: skip

    def backward_calls(self, need_grad_x: bool, relu_output: Ref | None = None) -> list[Call | Sync]:
        """This piece's gradient sums; then, for dL/dx, the batch's (combined over the
        pieces). With `relu_output` (a fused ReLU's output) grad_out is the gradient after
        the ReLU, masked here."""
        mask = {"relu": relu_output is not None,
                "activated": relu_output if relu_output is not None else buf("out")}  # fmt: skip
        calls: list[Call | Sync] = [
            Call(batchnorm_grad_sums, grad_out=GRAD_OUT, x=X, mean=scratch("mean"),
                 inv_std=scratch("inv_std"), **mask, grad_weight=grad("weight"), grad_bias=grad("bias"),
                 sums=scratch("sums"))
        ]  # fmt: skip
        if need_grad_x:
            calls += [
                Sync(scratch("sums"), add_shares),
                Call(batchnorm_grad_x, grad_out=GRAD_OUT, x=X, weight=param("weight"), mean=scratch("mean"),
                     inv_std=scratch("inv_std"), mode=scratch("mode"), sums=scratch("sums"), **mask,
                     grad_x=buf("grad_x")),
            ]  # fmt: skip
        return calls

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
