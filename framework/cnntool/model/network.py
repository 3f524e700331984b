"""A network is a list of layers: forward runs them in order, backward in reverse.

Each layer reads the layers named in its spec's `inputs` (by default the one before it), so
the list may describe a graph: residual shortcuts, branches joined by `add` or `concat`.
The order is one in which every layer comes after those it reads; backward sums the
gradients of an output that several layers read.

The last layer's output is the logits. When the spec ends with a `softmax` layer, that layer
is the classifier head: `forward` returns probabilities, and training computes the loss from
the logits that feed it (see `Network.head`).

All parameters live in one flat float32 array (`flat_params`; `layer.params[...]` are views
into it), and so do their gradients and the layers' state. When every layer declares its
kernel calls, the network is compiled into one numba function per task (`cnntool.compile.plan`);
otherwise it runs layer by layer. Both give the same results.
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any

import numpy as np

from cnntool.compile.memory import align, aligned_zeros
from cnntool.compile.plan import FUSE_ENV, Plan, fusable
from cnntool.errors import CnntoolError, InputError
from cnntool.kernels.activation import softmax_forward
from cnntool.kernels.loss import argmax_rows, softmax_cross_entropy
from cnntool.layers.base import Layer, Shape
from cnntool.model.blame import check_result, compiled_failed, layer_failed
from cnntool.model.execution import describe_execution
from cnntool.model.parts import SharedImage
from cnntool.model.spec import layer_rows, plan_layers, validate_spec
from cnntool.system.threads import ensure_threads, run_parallel, use_blas_threads

# Below this many examples per thread, splitting a batch across threads costs more than it saves.
MIN_EXAMPLES_PER_THREAD = 8
# A batch in one piece lets BLAS use every thread only from this many FLOPs in its costliest
# layer: below, handing each product to two threads costs more than it saves (the ResNet at
# batch 1: 640 µs on one BLAS thread, 869-1161 µs on two, measured with tools/bench.py).
BLAS_THREADS_FLOPS = 10_000_000


class Network:
    """Layers built from a validated spec, with their parameters."""

    def __init__(self, spec: Any, layers: list[Layer]) -> None:
        self.spec = spec
        self.layers = layers
        self.head = len(layers) - 1 if layers[-1].config.type == "softmax" else len(layers)
        self.flat_params, self.param_offsets = consolidate(layers, "params")
        self.flat_grads, _ = consolidate(layers, "grads")
        self.flat_state, self.state_offsets = consolidate(layers, "state")
        # Random layers (dropout) hash [seed, step] (cnntool.layers.base.RANDOM): every forward
        # in training mode takes the next step, so each gets fresh masks, reproducibly.
        self.random = np.zeros(2, np.int64)
        for layer in layers:
            layer.random = self.random
        # The weight of each class in the training loss (Keras's class_weight): ones unless
        # training sets them; evaluation always weighs every class alike.
        classes = self.layers[self.head - 1].output_shape[0]
        self.class_weights = np.ones(classes, np.float32)
        self.unit_weights = np.ones(classes, np.float32)
        self.use_plan = os.environ.get(FUSE_ENV, "1").strip() != "0"
        self._plan: Any = None
        self._plan_checked = False
        self._last_x: np.ndarray | None = None
        self._runners: dict[tuple[str, int, int], Any] = {}
        self._runners_generation = 0
        self._input_shape = tuple(spec.input_shape)

    @classmethod
    def from_spec(cls, spec: Any, *, seed: int = 0, registry: Any = None) -> Network:
        """Validate `spec` (a dict, JSON text or a path), build every layer and initialise
        the parameters from `seed`: the same seed gives the same weights."""
        net = cls.build(validate_spec(spec, registry), np.random.default_rng(seed), registry)
        net.random[0] = seed
        return net

    @classmethod
    def build(cls, spec: Any, rng: np.random.Generator | None, registry: Any = None) -> Network:
        """Build a validated spec; `rng=None` leaves parameters zero (to be loaded)."""
        layers = plan_layers(spec, registry)
        for layer in layers:
            layer.build(layer.input_shape, rng)
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
        """Every trained parameter by full key '<layer>.<param>'; the arrays are live (what a
        bundle stores; `params_with_grads` pairs each with its gradient for an optimizer)."""
        return {f"{layer.name}.{key}": value for layer in self.layers for key, value in layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {f"{layer.name}.{key}": value for layer in self.layers for key, value in layer.grads.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Non-trained buffers (running statistics) by full key."""
        return {f"{layer.name}.{key}": value for layer in self.layers for key, value in layer.state.items()}

    def params_with_grads(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(key, parameter, gradient) triples in layer order, what an optimizer updates."""
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
        return layer_rows(self.layers)

    @property
    def plan(self) -> Any:
        """The compiled plan, or None when some layer runs only layer by layer."""
        if not self._plan_checked:
            self._plan_checked = True
            if self.use_plan and fusable(self.layers):
                try:
                    self._plan = Plan(self)
                except Exception as exc:
                    raise compiled_failed(self, "compiling", exc) from exc
        return self._plan

    def execution(self, registry: Any = None) -> dict[str, Any]:
        """Whether the network runs compiled, and if not which layer forces layer by layer and
        what it costs (cnntool.model.execution)."""
        return describe_execution(self.layers, registry, use_plan=self.use_plan)

    # --- computing -------------------------------------------------------------------------

    def forward(self, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        """x (N, C, H, W) -> the last layer's output (N, classes), a fresh array."""
        x = self.check_input(x)
        self._last_x = x
        if training:
            self.random[1] += 1
        plan = self.plan
        if plan is not None:
            try:
                return plan.forward(x, training).copy()
            except Exception as exc:
                raise compiled_failed(self, "forward", exc) from exc
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
            try:
                return plan.backward(grad, x).copy()
            except Exception as exc:
                raise compiled_failed(self, "backward", exc) from exc
        return self.run_backward(grad, need_input_grad=True).copy()

    def run_forward(self, x: np.ndarray, *, training: bool = False, stop: int | None = None) -> np.ndarray:
        """Forward through layers[:stop], layer by layer, without checks or copies; the
        result is a buffer that the next call overwrites."""
        outputs = {-1: x}
        layers = self.layers[:stop]
        for index, layer in enumerate(layers):
            inputs = [outputs[source] for source in layer.sources]
            try:
                out = layer.forward(inputs if layer.multi_input else inputs[0], training=training)
            except Exception as exc:
                raise layer_failed(index, layer, "forward", exc) from exc
            if type(out) is not np.ndarray or out.shape[1:] != layer.output_shape:
                check_result(index, layer, "forward", out, (x.shape[0], *layer.output_shape))
            outputs[index] = out
        return outputs[len(layers) - 1]

    def run_backward(
        self, grad: np.ndarray, *, need_input_grad: bool, start: int | None = None
    ) -> np.ndarray:
        """Backward through layers[:start] in reverse, layer by layer, without checks or
        copies; where several layers read one output, their gradients are summed."""
        layers = self.layers[:start]
        grads: dict[int, np.ndarray] = {len(layers) - 1: grad}
        for index in reversed(range(len(layers))):
            layer = layers[index]
            layer.need_input_grad = need_input_grad or any(source >= 0 for source in layer.sources)
            try:
                results = layer.backward(grads.pop(index))
            except Exception as exc:
                raise layer_failed(index, layer, "backward", exc) from exc
            if not layer.need_input_grad:
                continue
            if not layer.multi_input and (
                type(results) is not np.ndarray or results.shape[1:] != layer.input_shape
            ):
                check_result(index, layer, "backward", results, (grad.shape[0], *layer.input_shape))
            for source, result in zip(
                layer.sources, results if layer.multi_input else [results], strict=True
            ):
                grads[source] = grads[source] + result if source in grads else result
        return grads.get(-1)  # type: ignore[return-value]

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A C-contiguous float32 (N, C, H, W) batch matching the input shape, or InputError."""
        if (
            type(x) is np.ndarray
            and x.dtype == np.float32
            and x.ndim == 4
            and x.shape[1:] == self._input_shape
        ):
            return x if x.flags.c_contiguous else np.ascontiguousarray(x)
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
        n = x.shape[0]
        probs = np.empty((n, self.output_shape[0]), np.float32)
        if n <= batch_size:  # the common case, kept short: it is the latency of one request
            self.runner("predict", n)(x, probs)
            return probs
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            self.runner("predict", stop - start)(x[start:stop], probs[start:stop])
        return probs

    def train_step(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """Forward, softmax cross-entropy (mean over the batch) from the logits, backward.
        Fills the gradients; returns the summed loss and the number of correct predictions.
        `x` must be C-contiguous float32 and `labels` int64, as the training loop makes them."""
        self.random[1] += 1  # a new draw of every random layer (dropout masks)
        return self.runner("train_step", x.shape[0])(x, labels)

    def evaluate_batch(self, x: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, int]:
        """Summed loss and correct count in inference mode; predicted classes into `predictions`."""
        return self.runner("evaluate", x.shape[0])(x, labels, predictions)

    def runner(self, task: str, n: int) -> Any:
        """The function doing `task` ("train_step", "evaluate" or "predict") on batches of n,
        with everything that does not change between batches bound once: the hot path."""
        plan = self._plan
        if plan is not None and plan.generation != self._runners_generation:
            # A workspace grew (a larger batch came): the runners hold its old arrays.
            self._runners.clear()
            self._runners_generation = plan.generation
        key = (task, n, ensure_threads())
        run = self._runners.get(key)
        if run is None:
            run = self._runners[key] = self._make_runner(task, n)
            if self._plan is not None and self._plan.generation != self._runners_generation:
                self._runners = {key: run}  # made while a workspace grew: the rest is stale
                self._runners_generation = self._plan.generation
        return run

    def _make_runner(self, task: str, n: int) -> Any:
        plan = self.plan
        if plan is None:
            return self._layer_by_layer_runner(task, n)
        compiled = getattr(plan.module, task)
        scale = (1.0 / n,) if task == "train_step" else ()
        bounds = self.pieces(n, task)
        if len(bounds) == 2:
            arrays = (*scale, *plan.arrays(task, plan.workspace(n, 0, task)))
            # One piece: the matrix products may use every thread, if they are large enough
            # to gain from it; handing small ones to two threads costs more than it saves.
            threads = ensure_threads() if n * self.largest_layer_flops() >= BLAS_THREADS_FLOPS else 1

            def whole(*batch: np.ndarray) -> Any:
                use_blas_threads(threads)
                try:
                    return compiled(*batch, *arrays)
                except Exception as exc:
                    raise compiled_failed(self, task, exc) from exc

            if task == "predict" and n == 1 and ensure_threads() > 1 and plan.uses_parts:
                return self._parts_runner(plan, whole)
            return whole
        pieces = list(itertools.pairwise(bounds))
        if task == "train_step" and plan.parts:
            return self._synced_runner(plan, pieces, scale)
        # Each piece knows where it starts in the batch, so random layers draw the same
        # numbers for an example whatever the cut.
        spaces = [
            (*scale, *plan.arrays(task, plan.workspace(b - a, k, task), offset=a))
            for k, (a, b) in enumerate(pieces)
        ]

        def split(*batch: np.ndarray) -> Any:
            use_blas_threads(1)  # the pieces run at once, one thread each
            jobs = [
                functools.partial(compiled, *(item[a:b] for item in batch), *arrays)
                for (a, b), arrays in zip(pieces, spaces, strict=True)
            ]
            try:
                results = run_parallel(jobs)
            except Exception as exc:
                raise compiled_failed(self, task, exc) from exc
            if task == "predict":
                return None
            if task == "train_step":
                for worker in range(1, len(pieces)):
                    np.add(self.flat_grads, plan.workspaces[worker].grads, out=self.flat_grads)
            return sum(r[0] for r in results), sum(r[1] for r in results)

        return split

    def _parts_runner(self, plan: Plan, alone: Any) -> Any:
        """predict for one image on every thread at once: the plan's predict_parts, one part
        per thread, each with its own scratch and the activations shared (worker 0's), the
        parts past the first on threads that stay awake between images
        (cnntool.model.parts). Called from one of the pool's own threads, which the other
        parts would wait for, it runs `alone` (predict on this thread) instead."""
        parts = ensure_threads()
        shared = plan.workspace(1, 0, "predict")
        spaces = [
            plan.arrays("predict_parts", plan.workspace(1, k, "predict"), shared=shared) for k in range(parts)
        ]
        return SharedImage(
            plan.module.predict_parts, parts, spaces, alone, self.input_shape, self.output_shape[0],
            lambda exc: compiled_failed(self, "predict", exc),
        )  # fmt: skip

    def _synced_runner(self, plan: Any, pieces: list[tuple[int, int]], scale: tuple) -> Any:
        """train_step for a network whose layers meet at Sync points (batch norm), its
        batch cut into pieces: every piece runs a part of the step at once, then each
        Sync's arrays are combined over the pieces, then the next part runs."""
        spaces = [plan.workspace(b - a, k) for k, (a, b) in enumerate(pieces)]
        arguments = [(*scale, *plan.arrays("train_parts", space, offset=a))
                     for space, (a, _) in zip(spaces, pieces, strict=True)]  # fmt: skip
        parts = [(functools.partial(plan.module.train_parts, part), arguments) for part in plan.parts]
        shares = [
            ([plan.scratch_view(space, array) for space in spaces], combine) for array, combine in plan.syncs
        ]

        def synced(x: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
            use_blas_threads(1)  # the pieces run at once, one thread each
            loss, correct = 0.0, 0
            for number, (function, arguments) in enumerate(parts):
                jobs = [
                    functools.partial(function, x[a:b], labels[a:b], *args)
                    for (a, b), args in zip(pieces, arguments, strict=True)
                ]
                for part_loss, part_correct in run_parallel(jobs):
                    loss, correct = loss + part_loss, correct + part_correct
                if number < len(shares):
                    views, combine = shares[number]
                    combined = combine(views)
                    for view in views:
                        view[...] = combined
            for worker in range(1, len(pieces)):
                np.add(self.flat_grads, plan.workspaces[worker].grads, out=self.flat_grads)
            return loss, correct

        return synced

    def _layer_by_layer_runner(self, task: str, n: int) -> Any:
        grad = np.empty((n, self.layers[self.head - 1].output_shape[0]), np.float32)

        def train_step(x: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
            logits = self.run_forward(x, training=True, stop=self.head)
            loss, correct = softmax_cross_entropy(logits, labels, self.class_weights, grad, 1.0 / n)
            self.run_backward(grad, need_input_grad=False, start=self.head)
            return loss, correct

        def evaluate(x: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, int]:
            logits = self.run_forward(x, stop=self.head)
            argmax_rows(logits, predictions)
            return softmax_cross_entropy(logits, labels, self.unit_weights, grad, 0.0)

        def predict(x: np.ndarray, probs: np.ndarray) -> None:
            softmax_forward(self.run_forward(x, stop=self.head), probs)

        return {"train_step": train_step, "evaluate": evaluate, "predict": predict}[task]

    def largest_layer_flops(self) -> int:
        """The FLOPs per example of the network's costliest layer."""
        return max(int(layer.flops(layer.input_shape)) for layer in self.layers)

    def pieces(self, n: int, task: str = "train_step") -> list[int]:
        """Bounds cutting a batch of n into one piece per thread for `task`; a single piece
        when the batch is small or a layer couples the examples of a batch, unless it meets
        the other pieces at Sync points (batch norm: in training, when the plan cut
        train_step into parts; in inference it computes each example alone)."""
        count = min(ensure_threads(), n // MIN_EXAMPLES_PER_THREAD)
        coupled = [layer for layer in self.layers if not layer.per_example]
        synced = all(layer.syncs for layer in coupled) and (
            task in ("predict", "evaluate") or (self.plan is not None and bool(self.plan.parts))
        )
        if count <= 1 or (coupled and not synced):
            return [0, n]
        return [(n * k) // count for k in range(count + 1)]

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
