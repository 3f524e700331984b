"""Optimizers. Each follows PyTorch's definition and defaults, so a run can be compared
step for step. An optimizer holds (parameter, gradient) pairs of a network and updates the
parameters in place; `step()` uses whatever the last `backward` left in the gradients."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.compile.memory import aligned_zeros
from cnntool.errors import CnntoolError
from cnntool.kernels.optim import adam_update, sgd_update

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer"]


class Optimizer:
    """Common part: the network's flat parameter and gradient arrays, the step count and
    per-parameter slots (flat too, with per-key views for saving)."""

    kind = "optimizer"
    slot_names: tuple[str, ...] = ()

    def __init__(self, net: Any, lr: float) -> None:
        if not lr > 0:
            raise CnntoolError(f"Invalid value for `lr`. Expected a positive float. Received: lr={lr}")
        self.lr = float(lr)
        self.params = net.params_with_grads()
        self.flat_param, self.flat_grad = net.flat_params, net.flat_grads
        self.offsets = net.param_offsets
        self.steps = 0
        self.flat_slots = {name: aligned_zeros(self.flat_param.size) for name in self.slot_names}
        self.frozen: list[tuple[int, int]] = []  # (start, stop) ranges of flat_param kept fixed
        self._frozen_values = np.empty(0, np.float32)

    def freeze(self, keys: list[str]) -> None:
        """Keep the parameters `keys` ("<layer>.<param>") fixed: every step zeroes their
        gradients before the update (so no moments build up) and puts their values back
        after it (so weight decay does not shrink them either)."""
        ranges = []
        for key in keys:
            offset, shape = self.offsets[key]
            ranges.append((offset, offset + int(np.prod(shape))))
        self.frozen = sorted(ranges)
        self._frozen_values = np.empty(sum(stop - start for start, stop in ranges), np.float32)

    def step(self) -> None:
        """Apply the gradients; frozen parameters stay as they are."""
        if not self.frozen:
            self.update()
            return
        at = 0
        for start, stop in self.frozen:
            self.flat_grad[start:stop] = 0.0
            self._frozen_values[at : at + stop - start] = self.flat_param[start:stop]
            at += stop - start
        self.update()
        at = 0
        for start, stop in self.frozen:
            self.flat_param[start:stop] = self._frozen_values[at : at + stop - start]
            at += stop - start

    @property
    def slots(self) -> dict[str, dict[str, np.ndarray]]:
        """Each slot as {parameter key: live view}."""
        return {
            name: {
                key: flat[offset : offset + int(np.prod(shape))].reshape(shape)
                for key, (offset, shape) in self.offsets.items()
            }
            for name, flat in self.flat_slots.items()
        }

    def update(self) -> None:
        """One update of every parameter from its gradient (the optimizer's rule)."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Set every gradient to zero (backward overwrites them, so training never needs it)."""
        self.flat_grad.fill(0.0)

    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: kind, hyperparameters, step count and slot arrays."""
        return {"type": self.kind, "hyper": self.hyperparameters(), "steps": self.steps, "slots": self.slots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != self.kind:
            raise CnntoolError(f"optimizer state is for {state.get('type')!r}, not {self.kind!r}")
        self.steps = int(state["steps"])
        for name, views in self.slots.items():
            for key, view in views.items():
                np.copyto(view, state["slots"][name][key])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD:

    g = grad + weight_decay * p
    v = g on the first step, then momentum * v + (1 - dampening) * g
    p -= lr * (g + momentum * v if nesterov else v)   (p -= lr * g without momentum)
    """

    kind = "sgd"
    slot_names = ("velocity",)

    def __init__(
        self,
        net: Any,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if nesterov and (momentum <= 0 or dampening != 0):
            raise CnntoolError("Nesterov momentum requires a momentum > 0 and zero dampening")
        super().__init__(net, lr)
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def update(self) -> None:
        sgd_update(
            self.flat_param, self.flat_grad, self.flat_slots["velocity"], self.lr, self.momentum,
            self.dampening, self.weight_decay, self.nesterov, self.steps == 0,
        )  # fmt: skip
        self.steps += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba), as torch.optim.Adam; weight decay is added to the gradient:

    g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g²
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    kind = "adam"
    slot_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(
        self,
        net: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(net, lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def update(self) -> None:
        self.steps += 1
        adam_update(
            self.flat_param, self.flat_grad, self.flat_slots["exp_avg"], self.flat_slots["exp_avg_sq"],
            self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay, self.decoupled, self.steps,
        )  # fmt: skip


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), as torch.optim.AdamW: the decay shrinks the weights
    directly, p *= 1 - lr * weight_decay, before the Adam update of the plain gradient."""

    kind = "adamw"
    decoupled = True

    def __init__(
        self,
        net: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(net, lr, betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
