"""Learning-rate schedules: the learning rate at each epoch (and step) of a run.

The training loop asks `rate(epoch, step)` at the start of every epoch, and at every step
while warming up, and sets `optimizer.lr`; `end_epoch(metric)` lets reduce-on-plateau
watch the monitored metric. Epochs count from 0. Each schedule follows its PyTorch
namesake stepped once per epoch:

    constant   lr
    step       lr * gamma ** (epoch // step_size)                          StepLR
    cosine     lr_min + (lr - lr_min) * (1 + cos(pi * epoch / T)) / 2      CosineAnnealingLR, T = epochs
    plateau    lr * gamma each time the metric has not improved (by the    ReduceLROnPlateau
               relative threshold 1e-4) for more than `patience` epochs,
               never below lr_min

Warm-up (`warmup_epochs` W > 0) comes first: the rate rises linearly, step by step, from
lr / S to lr over the S steps of the first W epochs (PyTorch's LinearLR with
start_factor 1/S). The schedule proper then starts, counting its epochs from the end of
the warm-up (T = epochs - W for cosine).
"""

from __future__ import annotations

import math
from typing import Any

from cnntool.errors import CnntoolError

__all__ = ["SCHEDULES", "Cosine", "ReduceOnPlateau", "Schedule", "StepDecay", "make_schedule"]

SCHEDULES = ("constant", "step", "cosine", "plateau")


class Schedule:
    """A constant rate, after an optional linear warm-up."""

    name = "constant"

    def __init__(self, lr: float, *, warmup_epochs: int = 0) -> None:
        if not lr > 0:
            raise CnntoolError(f"Invalid value for `lr`. Expected a positive float. Received: lr={lr}")
        self.lr = float(lr)
        self.warmup_epochs = int(warmup_epochs)
        self.steps_per_epoch = 1  # set by the trainer, for the warm-up's steps

    def warming_up(self, epoch: int) -> bool:
        return epoch < self.warmup_epochs

    def rate(self, epoch: int, step: int = 0) -> float:
        """The learning rate for step `step` (from 0) of epoch `epoch` (from 0)."""
        if self.warming_up(epoch):
            done = epoch * self.steps_per_epoch + step + 1
            return self.lr * done / (self.warmup_epochs * self.steps_per_epoch)
        return self.after_warmup(epoch - self.warmup_epochs)

    def after_warmup(self, epoch: int) -> float:
        return self.lr

    def end_epoch(self, epoch: int, metric: float | None) -> None:
        """Called after epoch `epoch` with the monitored metric's value."""

    def set_base_rate(self, lr: float) -> None:
        """Continue from the base rate `lr` (a resumed run given a new --lr)."""
        if not lr > 0:
            raise CnntoolError(f"Invalid value for `lr`. Expected a positive float. Received: lr={lr}")
        self.lr = float(lr)

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs beyond the options (JSON-safe)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StepDecay(Schedule):
    """lr * gamma ** (epoch // step_size)."""

    name = "step"

    def __init__(self, lr: float, *, step_size: int, gamma: float, **warmup: Any) -> None:
        super().__init__(lr, **warmup)
        self.step_size, self.gamma = int(step_size), float(gamma)

    def after_warmup(self, epoch: int) -> float:
        return self.lr * self.gamma ** (epoch // self.step_size)


class Cosine(Schedule):
    """lr_min + (lr - lr_min) * (1 + cos(pi * epoch / epochs)) / 2."""

    name = "cosine"

    def __init__(self, lr: float, *, epochs: int, lr_min: float = 0.0, **warmup: Any) -> None:
        super().__init__(lr, **warmup)
        self.epochs, self.lr_min = max(int(epochs), 1), float(lr_min)

    def after_warmup(self, epoch: int) -> float:
        return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * epoch / self.epochs)) / 2


class ReduceOnPlateau(Schedule):
    """PyTorch's ReduceLROnPlateau (threshold 1e-4 relative, no cooldown): after more than
    `patience` epochs without improvement, lr = max(lr * gamma, lr_min)."""

    name = "plateau"
    threshold = 1e-4

    def __init__(
        self, lr: float, *, gamma: float, patience: int, lr_min: float = 0.0, mode: str = "min", **warmup: Any
    ) -> None:
        super().__init__(lr, **warmup)
        self.gamma, self.patience, self.lr_min, self.mode = float(gamma), int(patience), float(lr_min), mode
        self.current = self.lr
        self.best: float | None = None
        self.bad_epochs = 0

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best * (1 - self.threshold)
        return value > self.best * (1 + self.threshold)

    def after_warmup(self, epoch: int) -> float:
        return self.current

    def end_epoch(self, epoch: int, metric: float | None) -> None:
        if self.warming_up(epoch) or metric is None or not math.isfinite(metric):
            return
        if self.improves(metric):
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            reduced = max(self.current * self.gamma, self.lr_min)
            if self.current - reduced > 1e-8:
                self.current = reduced
            self.bad_epochs = 0

    def set_base_rate(self, lr: float) -> None:
        super().set_base_rate(lr)
        self.current = self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])


def make_schedule(options: Any, lr: float) -> Schedule:
    """The schedule a TrainingConfig describes, starting from learning rate `lr`."""
    warmup = {"warmup_epochs": options.warmup_epochs}
    if options.lr_schedule == "step":
        return StepDecay(lr, step_size=options.lr_step_size, gamma=options.lr_gamma, **warmup)
    if options.lr_schedule == "cosine":
        return Cosine(lr, epochs=options.epochs - options.warmup_epochs, lr_min=options.lr_min, **warmup)
    if options.lr_schedule == "plateau":
        mode = "max" if options.monitor.endswith("accuracy") else "min"
        return ReduceOnPlateau(
            lr,
            gamma=options.lr_gamma,
            patience=options.lr_patience,
            lr_min=options.lr_min,
            mode=mode,
            **warmup,
        )
    return Schedule(lr, **warmup)
