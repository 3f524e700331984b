"""Where a compiled network's arrays live: a `Layout` places every buffer a plan function uses
in a few flat pools (per-example workspace, fixed scratch), each 64-byte aligned, and a
`Workspace` holds those pools for one batch size and one thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnntool.layers.base import Array

ALIGN = 16  # floats: keeps every array 64-byte aligned


# The arrays a plan function may take after its own arguments, in this order.
POOLS = (
    "params", "grads", "state", "ws", "iws", "sws", "siws", "random", "offset", "dims", "reals",
    "class_weights", "unit_weights",
)  # fmt: skip


def align(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def aligned_zeros(size: int, dtype: Any = np.float32) -> np.ndarray:
    """A zeroed 1-D array whose first element sits on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(size + 64 // itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // itemsize
    return raw[skip : skip + size]


@dataclass
class Slot:
    """Where one array lives: in which flat array, at which offset, with which shape."""

    pool: str
    offset: int
    shape: tuple[int, ...]
    per_example: bool


@dataclass
class Layout:
    """Offsets of every array in the flat pools; per-example offsets scale with the batch."""

    slots: dict[str, Slot] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=lambda: {"ws": 0, "iws": 0, "sws": 0, "siws": 0})
    shared: dict[str, int] = field(default_factory=dict)  # see place

    def add(self, name: str, array: Array, per_example: bool) -> str:
        integer = np.dtype(array.dtype) == np.int32
        if not integer and np.dtype(array.dtype) != np.float32:
            raise TypeError(f"{name}: plan arrays must be float32 or int32, not {np.dtype(array.dtype)}")
        pool = ("iws" if integer else "ws") if per_example else ("siws" if integer else "sws")
        self.slots[name] = Slot(pool, self.sizes[pool], tuple(array.shape), per_example)
        self.sizes[pool] += align(math.prod(array.shape))
        return name

    def place(self, name: str, like: str, offset: int) -> int:
        """Put per-example array `name`, shaped like `like`, at `offset` of like's pool: a
        buffer sharing memory with others (see Generator.share), which may overlap the arrays
        `add` placed. Returns where it ends."""
        slot = self.slots[like]
        self.slots[name] = Slot(slot.pool, offset, slot.shape, True)
        end = offset + align(math.prod(slot.shape))
        self.shared[slot.pool] = max(self.shared.get(slot.pool, 0), end)
        return end

    def total(self, pool: str) -> int:
        """Elements of `pool` (per example for ws and iws) that every array fits in."""
        return max(self.sizes[pool], self.shared.get(pool, 0))


class Workspace:
    """The per-example and scratch pools of one worker thread, for batches of up to n
    examples (the compiled functions take the views a smaller batch needs from the front).
    An inference-only workspace (not `full`) holds just what predict and evaluate use, whose
    buffers share memory (Generator.share): a serving process never allocates what a
    training step keeps for its backward pass."""

    def __init__(self, layout: Layout, n: int, grads: np.ndarray, full: bool) -> None:
        self.n = n
        self.full = full
        ws, iws = (
            (layout.total("ws"), layout.total("iws"))
            if full
            else (layout.shared.get("ws", 0), layout.shared.get("iws", 0))
        )
        self.ws = aligned_zeros(ws * n)
        self.iws = aligned_zeros(iws * n, np.int32)
        self.sws = aligned_zeros(layout.total("sws"))
        self.siws = aligned_zeros(layout.total("siws"), np.int32)
        self.grads = grads
