"""Fully connected layer on flat inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

from cnntool.kernels.dense import dense_backward, dense_forward
from cnntool.layers.base import (
    GRAD_OUT,
    INITIALIZERS,
    Array,
    Call,
    Layer,
    LayerConfig,
    Shape,
    ShapeError,
    X,
    buf,
    grad,
    param,
    scratch,
)

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder


class DenseConfig(LayerConfig):
    type: Literal["dense"] = "dense"
    units: Annotated[int, Field(ge=1, le=1 << 20, description="Number of output features.")]
    use_bias: bool = True
    init: Literal["he_normal", "glorot_uniform"] = "he_normal"


class Dense(Layer):
    """y = x @ W.T + b, with W of shape (units, in_features) as in PyTorch's Linear.

    Backward, with g = dL/dy (N, units): dL/dW = g.T @ x, dL/db = sum of g over the batch,
    dL/dx = g @ W. Kernels (cnntool.kernels.dense): one sgemm over the whole batch for the
    forward (dense_forward), one for dL/dW and one for dL/dx (dense_backward, which skips
    dL/dx when nothing needs it). One image of a large network shared among the threads:
    each computes its share of the units (dense_forward_part, cnntool.kernels.parts).
    """

    Config = DenseConfig
    config: DenseConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        """Configs `cnntool plugin check` runs the conformance checks on."""
        return [
            ({"type": "dense", "units": 4}, (7,)),
            ({"type": "dense", "units": 3, "use_bias": False}, (5,)),
        ]

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ShapeError(
                f"expected a flat input (features,), received shape {tuple(input_shape)}; "
                'add {"type": "flatten"} before it'
            )
        return (self.config.units,)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (self.config.units, input_shape[0])}
        if self.config.use_bias:
            shapes["bias"] = (self.config.units,)
        return shapes

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        if name == "weight":
            return INITIALIZERS[self.config.init](shape, rng)
        return np.zeros(shape, np.float32)

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def scratch_arrays(self) -> dict[str, Array]:
        # Stands in for the bias (and its gradient) when use_bias is false.
        return {} if self.config.use_bias else {"no_bias": Array((self.config.units,))}

    def forward_calls(self, training: bool) -> list[Call]:
        bias = param("bias") if self.config.use_bias else scratch("no_bias")
        return [
            Call(
                dense_forward,
                x=X,
                weight=param("weight"),
                bias=bias,
                use_bias=self.config.use_bias,
                out=buf("out"),
            )
        ]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        grad_bias = grad("bias") if self.config.use_bias else scratch("no_bias")
        call = Call(
            dense_backward, grad_out=GRAD_OUT, x=X, weight=param("weight"), use_bias=self.config.use_bias,
            need_grad_x=need_grad_x, grad_weight=grad("weight"), grad_bias=grad_bias, grad_x=buf("grad_x"),
        )  # fmt: skip
        return [call]

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """Gemm: x @ weight.T (+ bias)."""
        weights = [onnx.param("weight"), *([onnx.param("bias")] if self.config.use_bias else [])]
        return onnx.node("Gemm", [inputs[0], *weights], transB=1)

    def flops(self, input_shape: Shape) -> int:
        return 2 * input_shape[0] * self.config.units + (self.config.units if self.config.use_bias else 0)
