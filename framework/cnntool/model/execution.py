"""Which path a network takes: compiled into one numba function per task (`cnntool.compile.plan`),
or layer by layer from Python, and when the latter, which layer forces it and what it costs.

`cnntool train`, `cnntool inspect` and `cnntool warmup` report this (and carry it in `--json`),
so a plugin that silently slows every network using it is named.
"""

from __future__ import annotations

import os
from typing import Any

from cnntool.compile.plan import FUSE_ENV, fallback
from cnntool.model.registry import get_registry

# What running layer by layer costs, measured with tools/bench.py (the extras network,
# hand-written layers against the same layers declaring their kernel calls).
LAYER_BY_LAYER_COST = (
    "every kernel is then a call from Python: training measured 1.6x slower at batch 32 and "
    "3.7x at batch 1 than compiled"
)
FIX = "declare the layer's kernel calls (forward_calls/backward_calls, docs/plugins.md section 8)"


def describe_execution(layers: list, registry: Any = None, *, use_plan: bool | None = None) -> dict[str, Any]:
    """{"compiled", "reason", "layer" ({index, name, type, provider} or None), "cost"}: how a
    network of these layers runs. `use_plan` false stands for CNNTOOL_FUSE=0."""
    if use_plan is None:
        use_plan = os.environ.get(FUSE_ENV, "1").strip() != "0"
    if not use_plan:
        return {
            "compiled": False,
            "reason": f"{FUSE_ENV}=0 is set",
            "layer": None,
            "cost": LAYER_BY_LAYER_COST,
        }
    try:
        found = fallback(layers)
    except Exception as exc:  # a plugin's forward_calls raising: it cannot compile either
        found = (
            next((k for k, layer in enumerate(layers) if not layer.view), 0),
            f"declaring its calls raised {exc!r}",
        )
    if found is None:
        return {"compiled": True, "reason": None, "layer": None, "cost": None}
    index, why = found
    layer = layers[index]
    registry = registry or get_registry()
    try:
        provider = registry.provider(layer.config.type)
    except Exception:
        provider = "?"
    return {
        "compiled": False,
        "reason": why,
        "layer": {"index": index, "name": layer.name, "type": layer.config.type, "provider": provider},
        "cost": LAYER_BY_LAYER_COST,
    }


def execution_line(execution: dict[str, Any]) -> str:
    """One line for people: 'compiled: ...' or 'layer by layer: <which layer>, <cost>; <fix>'."""
    if execution["compiled"]:
        return "runs compiled: one numba function per task (cnntool.compile.plan)"
    layer = execution["layer"]
    if layer is None:
        return f"runs layer by layer: {execution['reason']}; {execution['cost']}"
    return (
        f"runs layer by layer because of layer {layer['index']} ({layer['name']}, type {layer['type']!r} "
        f"from {layer['provider']}): {execution['reason']}; {execution['cost']}; {FIX}"
    )
