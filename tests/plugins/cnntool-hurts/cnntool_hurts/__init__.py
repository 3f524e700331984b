"""Layer types written in the declared style (kernel calls), each with one mistake that a
single call does not show, for the conformance kit's tests:

- `accumulating_scale`: backward adds into its weight gradient (grad[c] += ...) instead of
  overwriting it;
- `out_of_bounds`: declares one row less than its kernel writes (a write outside the output);
- `short_output`: declares one row more than its kernel writes;
- `batch_centered`: subtracts the batch mean but leaves `per_example` true, so a batch cut
  across threads gives other results than the whole batch;
- `crashes`: a hand-written forward calling a kernel that writes far outside its output;
- `moody`: y = x by hand, except that with CNNTOOL_HURTS_FAIL set it raises in forward on
  any input that is not all zeros (warm-ups run zeros), and with CNNTOOL_HURTS_SHAPE set its
  output has the wrong shape (for the tests of errors naming the plugin while training,
  inferring and serving).
"""

import os
from typing import Literal

import numpy as np
from numba import njit

from cnntool.layers import GRAD_OUT, Array, Call, Layer, LayerConfig, Shape, X, buf, grad, param


@njit(cache=True, nogil=True)
def copy_flat(x, out):
    """out = x, element by element over x (whatever shape out was declared with)."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    for i in range(src.size):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def copy_front(x, out):
    """out = the first out.size elements of x."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    for i in range(dst.size):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def scale_forward(x, weight, out):
    """out[n, c] = weight[c] * x[n, c]."""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[n, c] = weight[c] * x[n, c]


@njit(cache=True, nogil=True)
def scale_backward_accumulating(grad_out, x, weight, grad_weight, grad_x):
    """dx = weight * g; dweight[c] += sum g * x  (the mistake: never zeroed)."""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            grad_x[n, c] = weight[c] * grad_out[n, c]
            grad_weight[c] += grad_out[n, c] * x[n, c]


@njit(cache=True, nogil=True)
def center_forward(x, out):
    """out[n, f] = x[n, f] - mean over n of x[., f]."""
    for f in range(x.shape[1]):
        total = np.float32(0.0)
        for n in range(x.shape[0]):
            total += x[n, f]
        mean = total / np.float32(x.shape[0])
        for n in range(x.shape[0]):
            out[n, f] = x[n, f] - mean


@njit(cache=True, nogil=True)
def write_far(x, out):
    """Writes at an offset far past the end of out."""
    dst = out.reshape(out.size)
    dst[(1 << 40) + x.size] = 1.0


class AccumulatingScaleConfig(LayerConfig):
    type: Literal["accumulating_scale"] = "accumulating_scale"


class AccumulatingScale(Layer):
    """y[n, c] = weight[c] * x[n, c] on flat inputs; backward accumulates into grads."""

    Config = AccumulatingScaleConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        return [({"type": "accumulating_scale"}, (6,))]

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {"weight": input_shape}

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(scale_forward, x=X, weight=param("weight"), out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        return [
            Call(scale_backward_accumulating, grad_out=GRAD_OUT, x=X, weight=param("weight"),
                 grad_weight=grad("weight"), grad_x=buf("grad_x"))
        ]  # fmt: skip


class OutOfBoundsConfig(LayerConfig):
    type: Literal["out_of_bounds"] = "out_of_bounds"


class OutOfBounds(Layer):
    """Declares one row less than the kernel copies into the output."""

    Config = OutOfBoundsConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], input_shape[1] - 1, input_shape[2])

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(copy_flat, x=X, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        return [Call(copy_flat, x=GRAD_OUT, out=buf("grad_x"))]


class ShortOutputConfig(LayerConfig):
    type: Literal["short_output"] = "short_output"


class ShortOutput(OutOfBounds):
    """Declares one row more than the kernel writes."""

    Config = ShortOutputConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], input_shape[1] + 1, input_shape[2])

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        return [Call(copy_front, x=GRAD_OUT, out=buf("grad_x"))]


class BatchCenteredConfig(LayerConfig):
    type: Literal["batch_centered"] = "batch_centered"


class BatchCentered(Layer):
    """y = x - mean over the batch; dx = g - mean over the batch of g. It couples the
    examples of a batch but does not say so (per_example = False is missing)."""

    Config = BatchCenteredConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        return [({"type": "batch_centered"}, (5,))]

    def buffers(self) -> dict[str, Array]:
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training: bool) -> list[Call]:
        return [Call(center_forward, x=X, out=buf("out"))]

    def backward_calls(self, need_grad_x: bool) -> list[Call]:
        return [Call(center_forward, x=GRAD_OUT, out=buf("grad_x"))]


class CrashesConfig(LayerConfig):
    type: Literal["crashes"] = "crashes"


class Crashes(Layer):
    """A hand-written forward calling a kernel that writes far outside its output."""

    Config = CrashesConfig

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        out = self.buffer("out", x.shape)
        write_far(np.ascontiguousarray(x), out)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.copy()


class MoodyConfig(LayerConfig):
    type: Literal["moody"] = "moody"


class Moody(Layer):
    """y = x, by hand; fails on request (see the module docs)."""

    Config = MoodyConfig

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        if os.environ.get("CNNTOOL_HURTS_FAIL") and x.any():
            raise RuntimeError("moody failed on purpose")
        if os.environ.get("CNNTOOL_HURTS_SHAPE"):
            return x[:, :, 1:]
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out
