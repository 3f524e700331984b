"""Layer types with one mistake each, that only the conformance checks catch.

They compute with numpy directly: these are test fixtures, not examples to follow.
"""

from typing import Literal

import numpy as np
from pydantic import Field

from cnntool.layers import Layer, LayerConfig, Shape


class WrongGradientConfig(LayerConfig):
    type: Literal["wrong_gradient"] = "wrong_gradient"


class WrongGradient(Layer):
    """y = 2x, but backward says dx = 3 * grad_out."""

    Config = WrongGradientConfig

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        return 2 * x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return 3 * grad_out


class WrongShapeConfig(LayerConfig):
    type: Literal["wrong_shape"] = "wrong_shape"


class WrongShape(Layer):
    """Declares one row less than forward returns."""

    Config = WrongShapeConfig

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], input_shape[1] - 1, input_shape[2])

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        return x.copy()

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.copy()


class LostConfigConfig(LayerConfig):
    type: Literal["lost_config"] = "lost_config"
    factor: float = Field(default=2.0, exclude=True)


class LostConfig(Layer):
    """y = factor * x, but `factor` is left out when the config is dumped."""

    Config = LostConfigConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        return [({"type": "lost_config", "factor": 3.0}, (2, 4, 4))]

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        return np.float32(self.config.factor) * x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return np.float32(self.config.factor) * grad_out


class UnsavedWeightConfig(LayerConfig):
    type: Literal["unsaved_weight"] = "unsaved_weight"


class UnsavedWeight(Layer):
    """y = scale * x with a random scale kept outside `params`, so bundles lose it."""

    Config = UnsavedWeightConfig

    def build(self, input_shape: Shape, rng: np.random.Generator | None) -> Shape:
        self.scale = np.float32(1.0 if rng is None else rng.uniform(2.0, 3.0))
        return super().build(input_shape, rng)

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        return self.scale * x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return self.scale * grad_out
