"""A network is a list of layers: forward runs them in order, backward in reverse.

The last layer's output is the logits. When the spec ends with a `softmax` layer, that layer
is the classifier head: `forward` returns probabilities, and training computes the loss from
the logits that feed it (see `Network.head`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.errors import InputError
from cnntool.layers.base import Layer, Shape
from cnntool.spec import plan_layers, validate_spec


class Network:
    """Layers built from a validated spec, with their parameters."""

    def __init__(self, spec: Any, layers: list[Layer]) -> None:
        self.spec = spec
        self.layers = layers
        self.head = len(layers) - 1 if layers[-1].config.type == "softmax" else len(layers)

    @classmethod
    def from_spec(cls, spec: Any, *, seed: int = 0, registry: Any = None) -> Network:
        """Validate `spec` (a dict, JSON text or a path), build every layer and initialise
        the parameters from `seed`: the same seed gives the same weights."""
        return cls.build(validate_spec(spec, registry), np.random.default_rng(seed), registry)

    @classmethod
    def build(cls, spec: Any, rng: np.random.Generator | None, registry: Any = None) -> Network:
        """Build a validated spec; `rng=None` leaves parameters zero (to be loaded)."""
        layers = plan_layers(spec, registry)
        shape: Shape = tuple(spec.input_shape)
        for layer in layers:
            shape = layer.build(shape, rng)
        return cls(spec, layers)

    # --- description -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> Shape:
        return tuple(self.spec.input_shape)

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape

    @property
    def classes(self) -> list[str]:
        if self.spec.classes is not None:
            return list(self.spec.classes)
        return [str(i) for i in range(self.output_shape[0])]

    def spec_dict(self) -> dict:
        """The spec as JSON-safe data, every default and layer name explicit."""
        return self.spec.model_dump(mode="json", exclude_none=True)

    def params(self) -> dict[str, np.ndarray]:
        """Every trained parameter by full key '<layer>.<param>'; the arrays are live."""
        return {f"{layer.name}.{key}": value for layer in self.layers for key, value in layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {f"{layer.name}.{key}": value for layer in self.layers for key, value in layer.grads.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Non-trained buffers (running statistics) by full key."""
        return {f"{layer.name}.{key}": value for layer in self.layers for key, value in layer.state.items()}

    def parameters(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(key, parameter, gradient) triples, in layer order, for optimizers."""
        return [
            (f"{layer.name}.{key}", value, layer.grads[key])
            for layer in self.layers
            for key, value in layer.params.items()
        ]

    @property
    def num_params(self) -> int:
        return sum(value.size for layer in self.layers for value in layer.params.values())

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: name, type, output shape, parameter count, FLOPs per example."""
        from cnntool.summary import layer_rows

        return layer_rows(self.layers)

    # --- computing -------------------------------------------------------------------------

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        """x (N, C, H, W) -> the last layer's output (N, classes), a fresh array."""
        return self.run_forward(self.check_input(x), training=training).copy()

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Backpropagate dL/d(output); fills every layer's grads and returns dL/dx (fresh)."""
        grad = np.ascontiguousarray(grad_out, np.float32)
        return self.run_backward(grad, need_input_grad=True).copy()

    def run_forward(self, x: np.ndarray, *, training: bool = False, stop: int | None = None) -> np.ndarray:
        """Forward through layers[:stop] without checks or copies; the result is a buffer
        that the next call overwrites."""
        for layer in self.layers[:stop]:
            x = layer.forward(x, training=training)
        return x

    def run_backward(
        self, grad: np.ndarray, *, need_input_grad: bool, start: int | None = None
    ) -> np.ndarray:
        """Backward through layers[:start] in reverse, without checks or copies."""
        layers = self.layers[:start]
        layers[0].need_input_grad = need_input_grad
        for layer in reversed(layers):
            grad = layer.backward(grad)
        return grad

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A C-contiguous float32 (N, C, H, W) batch matching the input shape, or InputError."""
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"received {tuple(x.shape)}"
            )
        return np.ascontiguousarray(x, np.float32)

    def predict_proba(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, classes) for model-ready inputs, in batches."""
        from cnntool.kernels.activation import softmax_forward

        x = self.check_input(x)
        probs = np.empty((x.shape[0], self.output_shape[0]), np.float32)
        for start in range(0, x.shape[0], batch_size):
            logits = self.run_forward(x[start : start + batch_size], stop=self.head)
            softmax_forward(logits, probs[start : start + batch_size])
        return probs

    def load_arrays(self, weights: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the live parameters and buffers (shapes already checked)."""
        for key, value in self.params().items():
            np.copyto(value, weights[key])
        for key, value in self.state().items():
            np.copyto(value, state[key])

    def __repr__(self) -> str:
        return f"Network(name={self.name!r}, layers={len(self.layers)}, params={self.num_params})"
