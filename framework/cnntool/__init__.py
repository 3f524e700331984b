"""cnntool: a from-scratch convolutional-network framework.

    import cnntool
    net = cnntool.Network.from_spec("models/seed_cnn.json", seed=0)
    logits = net.forward(x)                      # x: (N, C, H, W) float32
    loss, grad = cnntool.softmax_cross_entropy(logits, labels)
    net.backward(grad)
    cnntool.optim.SGD(net, lr=0.01, momentum=0.9).step()
    cnntool.save_bundle(net, "model.cnnb")

Names are imported on first use, so `import cnntool` (and `cnntool --help`) stays fast and
does not load numba until a network is built.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnntool.errors import (
    BundleError,
    CnntoolError,
    DataError,
    InputError,
    InterchangeError,
    PluginError,
    SpecError,
)

__version__ = "0.1.0"

_LAZY = {
    "Network": "cnntool.model.network",
    "softmax_cross_entropy": "cnntool.training.losses",
    "save_bundle": "cnntool.bundle",
    "load_bundle": "cnntool.bundle",
    "Bundle": "cnntool.bundle",
    "validate_spec": "cnntool.model.spec",
    "load_dataset": "cnntool.data",
    "fit": "cnntool.training.loop",
    "evaluate": "cnntool.inference.evaluate",
    "set_threads": "cnntool.system.threads",
    "get_registry": "cnntool.model.registry",
    "Layer": "cnntool.layers.base",
    "LayerConfig": "cnntool.layers.base",
}
_SUBMODULES = {
    "optim",
    "layers",
    "kernels",
    "data",
    "registry",
    "spec",
    "bundle",
    "train",
    "schedules",
    "testing",
}

__all__ = [
    "Bundle",
    "BundleError",
    "CnntoolError",
    "DataError",
    "InputError",
    "InterchangeError",
    "Layer",
    "LayerConfig",
    "Network",
    "PluginError",
    "SpecError",
    "__version__",
    "evaluate",
    "fit",
    "get_registry",
    "load_bundle",
    "load_dataset",
    "optim",
    "save_bundle",
    "set_threads",
    "softmax_cross_entropy",
    "validate_spec",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"cnntool.{name}")
    else:
        raise AttributeError(f"module 'cnntool' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
