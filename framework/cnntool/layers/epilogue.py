"""An elementwise activation that the layer before it may apply in its own kernels.

A ReLU after a stride-1 convolution costs no pass of its own in a compiled plan: the
convolution applies it as it writes its output (`Conv2D.fuses`). Any activation can offer
the same by declaring an `Epilogue`: two scalar `@njit` functions of float32 numbers,

    value(x, a, b)        y for one pre-activation x
    derivative(x, a, b)   dy/dx at that x

and the two numbers `a`, `b` they take (hyperparameters; 0 when unused); `increasing`
says that `value` never decreases, so that a max-pool may be taken before it. A convolution
before it then calls `value` on each element of each image right after computing it
(`cnntool.kernels.epilogue`), and `derivative` in its backward pass; the plan compiles
them into the convolution's kernel by name, so numba inlines them. Layer by layer, the
activation runs its own kernels as usual: the two must agree, which the conformance
kit's `compiled` check verifies on a network with a convolution before the activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Epilogue:
    """y = value(x, a, b), dy/dx = derivative(x, a, b): module-level scalar @njit functions."""

    value: Any
    derivative: Any
    a: float = 0.0
    b: float = 0.0
    # True when value never decreases (leaky_relu with a slope >= 0; not swish): a max-pool
    # after the activation may then pool first, so inference fuses convolution, activation
    # and a 2x2 max-pool into one pass, as for ReLU.
    increasing: bool = False

    def arguments(self) -> dict[str, Any]:
        """The kernel arguments that carry it (see cnntool.kernels.epilogue)."""
        return {
            "value": self.value,
            "derivative": self.derivative,
            "a": np.float32(self.a),
            "b": np.float32(self.b),
        }
