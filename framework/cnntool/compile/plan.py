"""Compiling a network: every layer's kernel calls in one numba function.

When every layer of a network declares its kernel calls (`forward_calls`, `backward_calls`
in cnntool.layers.base), the network is turned into a small Python module, generated as
text, holding five @njit functions, more with batch norm or for a large network (each also
takes the flat arrays described below):

    predict(x, probs)                      softmax probabilities into probs
    forward(x, training)                   the last layer's output
    backward(grad, x)                      the input gradient, after forward(x, True)
    evaluate(x, labels, predictions)       (loss sum, correct), predicted classes
    train_step(x, labels, grad_scale)      forward, loss from the logits, backward:
                                           (loss sum, correct), gradients filled
    train_parts(part, x, labels, grad_scale)  with batch norm: train_step cut at the
                                           points where the pieces of a batch combine
                                           their statistics, one part per call
    predict_parts(part, parts, flags, control, x, probs)  predict for one image shared
                                           among threads (cnntool.kernels.parts), used by
                                           a large network (Plan.uses_parts)

Every array they use is a view into a few flat arrays: the network's parameters, gradients
and state, a per-example workspace (`ws` float32, `iws` int32, sized for the batch at hand)
and fixed scratch (`sws`, `siws`). A training step is then one call from Python instead of
twenty, and numba compiles and caches it like any other kernel. The module is written to
the plan cache (CNNTOOL_CACHE_DIR, else ~/.cache/cnntool) under a name derived from its
text, so the same network shape reuses the same compiled code in every process.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from cnntool.compile import codegen
from cnntool.compile.cache import CHILD_FUNCTIONS, load_module
from cnntool.compile.codegen import INFERENCE_TASKS, Generator
from cnntool.compile.memory import Workspace, aligned_zeros
from cnntool.layers.base import Layer, Sync

FUSE_ENV = "CNNTOOL_FUSE"  # 0: run every network layer by layer (model.network)


def fusable(layers: list[Layer]) -> bool:
    """True when every layer declares its kernels (or is a view) with importable kernels."""
    return fallback(layers) is None


def fallback(layers: list[Layer]) -> tuple[int, str] | None:
    """The first layer that keeps a network from being compiled, as (index, why), or None."""
    for index, layer in enumerate(layers):
        if layer.view:
            continue
        for what, calls in (
            ("forward_calls(training=True)", layer.forward_calls(True)),
            ("forward_calls(training=False)", layer.forward_calls(False)),
            ("backward_calls(need_grad_x=True)", layer.backward_calls(True)),
        ):
            if calls is None:
                return index, f"{type(layer).__name__} writes forward/backward by hand ({what} is None)"
            for call in calls:
                if isinstance(call, Sync):
                    continue
                kernel, _ = call
                name = getattr(kernel, "__name__", repr(kernel))
                module = sys.modules.get(getattr(kernel, "__module__", ""), None)
                if module is None or getattr(module, name, None) is not kernel:
                    return index, f"kernel {name} of {what} is not a module-level function of its module"
    return None


def activation_memory(net: Any) -> dict[str, int]:
    """What `Plan(net).memory` will be, without writing or loading the plan's module."""
    generator = Generator(net)
    generator.source()
    return generator.memory()


class Plan:
    """A network compiled into one module of numba functions (see the module docs)."""

    def __init__(self, net: Any) -> None:
        self.net = net
        generator = Generator(net)
        self.source = generator.source()
        self.layout = generator.layout
        self.signatures = generator.signatures
        self.dims = np.array(generator.dims, np.int64)
        self.reals = np.array(generator.reals, np.float64)
        self.memory = generator.memory()
        self.parts = generator.parts
        self.syncs = generator.syncs
        # One image shared among threads (predict_parts) pays from PARTS_MIN_FLOPS on.
        self.uses_parts = generator.parts_flops >= codegen.PARTS_MIN_FLOPS
        self.module = load_module(self.source)
        self.workspaces: dict[int, Workspace] = {}
        # Counts workspace replacements, so callers holding on to the old arrays rebind.
        self.generation = 0

    def workspace(self, n: int, worker: int = 0, task: str = "train_step") -> Workspace:
        """The worker's workspace for `task`, grown (replaced) when it holds fewer than n
        examples or only inference buffers for a task that needs all; one per worker,
        whatever the batch sizes seen, so memory follows the largest batch."""
        space = self.workspaces.get(worker)
        full = task not in INFERENCE_TASKS
        if space is None or space.n < n or (full and not space.full):
            if space is not None:
                n = max(n, space.n)
                full = full or space.full
                grads = space.grads
            elif worker == 0:
                grads = self.net.flat_grads
            else:
                grads = aligned_zeros(self.net.flat_grads.size)
            space = self.workspaces[worker] = Workspace(self.layout, n, grads, full)
            self.generation += 1
        return space

    def scratch_view(self, space: Workspace, array: str) -> np.ndarray:
        """One worker's scratch array (a Sync's, say) as numpy sees it."""
        slot = self.layout.slots[array]
        pool = space.siws if slot.pool == "siws" else space.sws
        return pool[slot.offset : slot.offset + math.prod(slot.shape)].reshape(slot.shape)

    def arrays(
        self, function: str, space: Workspace, offset: int = 0, shared: Workspace | None = None
    ) -> tuple:
        """The trailing arguments of a plan function, for one worker's workspace; `offset` is
        the index of x's first example in the whole batch (for random layers, see
        cnntool.layers.base.OFFSET). With `shared`, the per-example buffers are that
        workspace's (the parts of predict_parts share the activations, not the scratch)."""
        net = self.net
        examples = shared if shared is not None else space
        pools = {
            "params": net.flat_params, "grads": space.grads, "state": net.flat_state, "ws": examples.ws,
            "iws": examples.iws, "sws": space.sws, "siws": space.siws, "random": net.random, "offset": offset,
            "dims": self.dims, "reals": self.reals, "class_weights": net.class_weights,
            "unit_weights": net.unit_weights,
        }  # fmt: skip
        return tuple(pools[name] for name in self.signatures[function])

    def train_in_parts(self, x: np.ndarray, labels: np.ndarray, grad_scale: float) -> tuple[float, int]:
        """train_step as its parts (see Generator.cut), run one after the other as one piece
        in worker 0's workspace: what a batch cut across threads runs, uncut."""
        space = self.workspace(x.shape[0])
        loss, correct = 0.0, 0
        arrays = self.arrays("train_parts", space)
        for part in self.parts:
            part_loss, part_correct = self.module.train_parts(part, x, labels, grad_scale, *arrays)
            loss, correct = loss + part_loss, correct + part_correct
        return loss, correct

    def child_functions(self) -> tuple[str, ...]:
        """The functions a training run compiles ahead (cnntool.compile.cache)."""
        return (*CHILD_FUNCTIONS, *(["train_parts"] if self.parts else []),
                *(["predict_parts"] if self.uses_parts else []))  # fmt: skip

    def predict_in_one_part(self, x: np.ndarray) -> np.ndarray:
        """predict_parts as a single part on this thread (what compiles it, whatever the
        thread count); x holds one image."""
        probs = np.empty((x.shape[0], self.net.output_shape[0]), np.float32)
        arrays = self.arrays("predict_parts", self.workspace(x.shape[0], 0, "predict"))
        self.module.predict_parts(0, 1, np.zeros(2, np.int64), np.zeros(0, np.int64), x, probs, *arrays)
        return probs

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return self.module.forward(x, training, *self.arrays("forward", self.workspace(x.shape[0])))

    def backward(self, grad: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.module.backward(grad, x, *self.arrays("backward", self.workspace(x.shape[0])))
