"""A network is a list of layers: forward runs them in order, backward in reverse.

The last layer's output is the logits. When the spec ends with a `softmax` layer, that layer
is the classifier head: `forward` returns probabilities, and training computes the loss from
the logits that feed it (see `Network.head`).

All parameters live in one flat float32 array (`flat_params`; `layer.params[...]` are views
into it), and so do their gradients and the layers' state. When every layer declares its
kernel calls, the network is compiled into one numba function per task (`cnntool.plan`);
otherwise it runs layer by layer. Both give the same results.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnntool.errors import CnntoolError, InputError
from cnntool.layers.base import Layer, Shape
from cnntool.spec import plan_layers, validate_spec

FUSE_ENV = "CNNTOOL_FUSE"
# Below this many examples per thread, splitting a batch across threads costs more than it saves.
MIN_EXAMPLES_PER_THREAD = 8


class Network:
    """Layers built from a validated spec, with their parameters."""

    def __init__(self, spec: Any, layers: list[Layer]) -> None:
        self.spec = spec
        self.layers = layers
        self.head = len(layers) - 1 if layers[-1].config.type == "softmax" else len(layers)
        self.flat_params, self.param_offsets = consolidate(layers, "params")
        self.flat_grads, _ = consolidate(layers, "grads")
        self.flat_state, self.state_offsets = consolidate(layers, "state")
        self.use_plan = os.environ.get(FUSE_ENV, "1").strip() != "0"
        self._plan: Any = None
        self._plan_checked = False
        self._last_x: np.ndarray | None = None
        self._grad_buffers: dict[int, np.ndarray] = {}

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
        """(key, parameter, gradient) triples, in layer order."""
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

    @property
    def plan(self) -> Any:
        """The compiled plan, or None when some layer runs only layer by layer."""
        if not self._plan_checked:
            from cnntool.plan import Plan, fusable

            self._plan_checked = True
            if self.use_plan and fusable(self.layers):
                self._plan = Plan(self)
        return self._plan

    # --- computing -------------------------------------------------------------------------

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        """x (N, C, H, W) -> the last layer's output (N, classes), a fresh array."""
        x = self.check_input(x)
        self._last_x = x
        plan = self.plan
        if plan is not None:
            return plan.forward(x, training).copy()
        return self.run_forward(x, training=training).copy()

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Backpropagate dL/d(output) of the last forward; fills every layer's grads and
        returns dL/dx (fresh)."""
        x = self._last_x
        if x is None:
            raise CnntoolError("backward needs a forward pass first")
        grad = np.ascontiguousarray(grad_out, np.float32)
        if grad.shape != (x.shape[0], *self.output_shape):
            raise InputError(
                f"expected a gradient of shape {(x.shape[0], *self.output_shape)}, received {grad.shape}"
            )
        plan = self.plan
        if plan is not None:
            return plan.backward(grad, x).copy()
        return self.run_backward(grad, need_input_grad=True).copy()

    def run_forward(self, x: np.ndarray, *, training: bool = False, stop: int | None = None) -> np.ndarray:
        """Forward through layers[:stop], layer by layer, without checks or copies; the
        result is a buffer that the next call overwrites."""
        for layer in self.layers[:stop]:
            x = layer.forward(x, training=training)
        return x

    def run_backward(
        self, grad: np.ndarray, *, need_input_grad: bool, start: int | None = None
    ) -> np.ndarray:
        """Backward through layers[:start] in reverse, layer by layer, without checks or copies."""
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
        x = self.check_input(x)
        probs = np.empty((x.shape[0], self.output_shape[0]), np.float32)
        plan = self.plan
        if plan is None:
            from cnntool.kernels.activation import softmax_forward

            for start in range(0, x.shape[0], batch_size):
                logits = self.run_forward(x[start : start + batch_size], stop=self.head)
                softmax_forward(logits, probs[start : start + batch_size])
            return probs
        for start in range(0, x.shape[0], batch_size):
            stop = min(start + batch_size, x.shape[0])
            self.split(start, stop, lambda a, b, w: plan.predict(x[a:b], probs[a:b], w))
        return probs

    def train_step(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """Forward, softmax cross-entropy (mean over the batch) from the logits, backward.
        Fills the gradients; returns the summed loss and the number of correct predictions.
        `x` must be C-contiguous float32 and `labels` int64, as the training loop makes them."""
        n = x.shape[0]
        plan = self.plan
        if plan is None:
            from cnntool.kernels.loss import softmax_cross_entropy

            logits = self.run_forward(x, training=True, stop=self.head)
            grad = self._grad_buffers.get(n)
            if grad is None:
                grad = self._grad_buffers[n] = np.empty((n, logits.shape[1]), np.float32)
            loss, correct = softmax_cross_entropy(logits, labels, grad, 1.0 / n)
            self.run_backward(grad, need_input_grad=False, start=self.head)
            return loss, correct
        scale = 1.0 / n
        results = self.split(0, n, lambda a, b, w: plan.train_step(x[a:b], labels[a:b], scale, w))
        for worker in range(1, len(results)):
            np.add(self.flat_grads, plan.workspace(results[worker][2], worker).grads, out=self.flat_grads)
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def evaluate_batch(self, x: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, int]:
        """Summed loss and correct count in inference mode; predicted classes into `predictions`."""
        plan = self.plan
        if plan is None:
            from cnntool.kernels.loss import argmax_rows, softmax_cross_entropy

            logits = self.run_forward(x, stop=self.head)
            argmax_rows(logits, predictions)
            return softmax_cross_entropy(logits, labels, np.empty_like(logits), 0.0)
        results = self.split(
            0, x.shape[0], lambda a, b, w: plan.evaluate(x[a:b], labels[a:b], predictions[a:b], w)
        )
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def split(self, start: int, stop: int, task: Any) -> list[tuple]:
        """Run task(a, b, worker) over [start, stop) cut into one piece per thread (one piece
        when the batch is small or a layer couples examples); returns
        (result..., piece size) per piece, in order."""
        from cnntool.threads import ensure_threads, run_parallel

        n = stop - start
        pieces = min(ensure_threads(), n // MIN_EXAMPLES_PER_THREAD)
        if pieces <= 1 or not all(layer.per_example for layer in self.layers):
            result = task(start, stop, 0)
            return [(*result, n) if isinstance(result, tuple) else (result, n)]
        bounds = [start + (n * k) // pieces for k in range(pieces + 1)]
        jobs = [(lambda a=bounds[k], b=bounds[k + 1], w=k: task(a, b, w)) for k in range(pieces)]
        results = run_parallel(jobs)
        return [
            (*result, bounds[k + 1] - bounds[k])
            if isinstance(result, tuple)
            else (result, bounds[k + 1] - bounds[k])
            for k, result in enumerate(results)
        ]

    def load_arrays(self, weights: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the live parameters and buffers (shapes already checked)."""
        for key, value in self.params().items():
            np.copyto(value, weights[key])
        for key, value in self.state().items():
            np.copyto(value, state[key])

    def __repr__(self) -> str:
        return f"Network(name={self.name!r}, layers={len(self.layers)}, params={self.num_params})"


def consolidate(layers: list[Layer], attribute: str) -> tuple[np.ndarray, dict[str, tuple[int, tuple]]]:
    """Move every array of `layer.<attribute>` into one flat float32 array (each start
    64-byte aligned) and put views of it back in their place; return the flat array and
    each key's (offset, shape)."""
    from cnntool.plan import align, aligned_zeros

    entries = [(layer, key, value) for layer in layers for key, value in getattr(layer, attribute).items()]
    flat = aligned_zeros(sum(align(value.size) for _, _, value in entries))
    offsets = {}
    offset = 0
    for layer, key, value in entries:
        view = flat[offset : offset + value.size].reshape(value.shape)
        view[...] = value
        getattr(layer, attribute)[key] = view
        offsets[f"{layer.name}.{key}"] = (offset, tuple(value.shape))
        offset += align(value.size)
    return flat, offsets
