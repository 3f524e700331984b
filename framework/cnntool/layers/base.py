"""What a layer is: a config, parameters with their gradients, a forward and a backward.

A layer is built in two steps, as in Keras: `__init__(config)` only stores the validated
hyperparameters; `build(input_shape, rng)` checks the input shape, allocates the parameters
and returns the output shape. Shapes never include the batch axis: an image layer sees
`(C, H, W)`, a dense layer `(features,)`.

`forward` and `backward` return arrays the layer owns and reuses on the next call with the
same batch size, so a training step allocates nothing; copy a result to keep it.
`backward` overwrites `grads` (it does not accumulate).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cnntool.errors import SpecError

Shape = tuple[int, ...]


class ShapeError(SpecError):
    """A layer cannot take the input shape it is given. The network adds which layer."""


class LayerConfig(BaseModel):
    """Fields every layer config has. Subclasses add `type: Literal[...]` and hyperparameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$",
        description="Stable layer name; parameter keys are '<name>.<param>'.",
    )


class Layer:
    """Base class of every layer type, built-in or from a plugin."""

    Config: ClassVar[type[LayerConfig]] = LayerConfig

    def __init__(self, config: LayerConfig) -> None:
        self.config = config
        self.name: str = config.name or config.type
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        # False for the first layer of a network while training: its input gradient is
        # never used, so layers may skip computing it.
        self.need_input_grad = True
        self._buffers: dict[str, np.ndarray] = {}

    # --- shapes: pure functions of the input shape, no allocation -------------------------

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        """The output shape for `input_shape`; raise ShapeError if the input does not fit."""
        return input_shape

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Name and shape of every trained parameter, for this input shape."""
        return {}

    def state_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Name and shape of every non-trained buffer (running statistics and the like)."""
        return {}

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        """Initial value of one parameter: He-normal for weights, zeros for the rest."""
        if name == "weight":
            return he_normal(shape, rng)
        return np.zeros(shape, np.float32)

    def init_state(self, name: str, shape: Shape) -> np.ndarray:
        return np.zeros(shape, np.float32)

    # --- building --------------------------------------------------------------------------

    def build(self, input_shape: Shape, rng: np.random.Generator | None) -> Shape:
        """Check the input shape, allocate parameters (initialised from `rng`), return the
        output shape. With `rng=None` parameters are zeros, to be filled from a bundle."""
        output_shape = self.compute_output_shape(tuple(input_shape))
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.params = {}
        for key, shape in self.param_shapes(self.input_shape).items():
            if rng is None:
                self.params[key] = np.zeros(shape, np.float32)
            else:
                self.params[key] = np.ascontiguousarray(self.init_param(key, shape, rng), np.float32)
        self.grads = {key: np.zeros_like(value) for key, value in self.params.items()}
        self.state = {
            key: self.init_state(key, shape) for key, shape in self.state_shapes(self.input_shape).items()
        }
        self._buffers = {}
        return self.output_shape

    # --- computing -------------------------------------------------------------------------

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flops(self, input_shape: Shape) -> int:
        """Floating-point operations of one forward pass for one example (a multiply-add is 2)."""
        return 0

    # --- helpers for subclasses ------------------------------------------------------------

    def buffer(self, key: str, shape: Shape, dtype: Any = np.float32) -> np.ndarray:
        """A scratch or output array kept between calls; reallocated only when its shape changes."""
        array = self._buffers.get(key)
        if array is None or array.shape != shape:
            array = np.empty(shape, dtype)
            self._buffers[key] = array
        return array

    def describe(self) -> dict[str, Any]:
        """The layer's config as JSON-safe data, without defaults left implicit."""
        data = self.config.model_dump(mode="json")
        data["name"] = self.name
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, output_shape={self.output_shape})"


def he_normal(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """He et al. (2015): N(0, 2 / fan_in), fan_in = product of all but the first axis."""
    fan_in = math.prod(shape[1:]) or 1
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def glorot_uniform(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in = (shape[1] if len(shape) > 1 else 1) * receptive
    fan_out = shape[0] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


INITIALIZERS = {"he_normal": he_normal, "glorot_uniform": glorot_uniform}


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def expect_image(layer: Layer, input_shape: Shape) -> tuple[int, int, int]:
    """Check that a layer gets a (C, H, W) input; name the fix when it does not."""
    if len(input_shape) != 3:
        raise ShapeError(f"expected an image input (channels, height, width), received shape {input_shape}")
    return input_shape  # type: ignore[return-value]
