"""Errors that blame the right party: a failure raised inside a plugin's layer while a
network trains, infers or serves becomes a `LayerError` naming the layer (name, type,
distribution and version), instead of cnntool's "internal error, please report it".

cnntool's own layers are not wrapped: a failure there is cnntool's, and stays one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.errors import CnntoolError, LayerError, exception_text
from cnntool.model.registry import get_registry


def provider_of(layer: Any) -> str | None:
    """'distribution==version' of a plugin layer's type; None for cnntool's own layers (and
    for types not known to the shared registry, such as test doubles)."""
    entry = get_registry().types.get(layer.config.type)
    if entry is None or entry.builtin:
        return None
    return entry.provider


def who(index: int, layer: Any, provider: str) -> str:
    return f"layer {index} ({layer.name}, type {layer.config.type!r} from {provider})"


def layer_failed(index: int, layer: Any, stage: str, exc: BaseException) -> BaseException:
    """The error to raise for `exc`, raised by layer `index` during `stage` ("forward",
    "backward"): a LayerError for a plugin's layer, `exc` itself otherwise."""
    provider = provider_of(layer)
    if provider is None or isinstance(exc, CnntoolError):
        return exc
    error = LayerError(
        f"{who(index, layer, provider)} failed in {stage}: {exception_text(exc, None, with_type=True)}; "
        f"this is the plugin's error: check it with `cnntool plugin check {provider.split('==')[0]}` "
        "and report it to its authors"
    )
    error.__cause__ = exc
    return error


def check_result(index: int, layer: Any, stage: str, result: Any, expected: tuple) -> None:
    """LayerError when a plugin layer's forward/backward returned something other than a
    float32 array of the shape its declarations give."""
    if type(result) is not np.ndarray:
        found = type(result).__name__
    elif result.shape == expected and result.dtype.name == "float32":
        return
    else:
        found = f"{result.dtype}{list(result.shape)}"
    provider = provider_of(layer)
    if provider is None:
        return
    source = "compute_output_shape" if stage == "forward" else "its input shape"
    raise LayerError(
        f"{who(index, layer, provider)}: {stage} returned {found}, expected float32{list(expected)} "
        f"(from {source}); this is the plugin's error: check it with "
        f"`cnntool plugin check {provider.split('==')[0]}`"
    )


def compiled_failed(net: Any, task: str, exc: BaseException) -> BaseException:
    """The error to raise for `exc` from a compiled plan function: a LayerError naming the
    plugin layer whose kernel the message mentions (or every plugin layer of the network
    when none is named), `exc` itself for a network of cnntool's layers only."""
    if isinstance(exc, CnntoolError):
        return exc
    suspects = []
    text = str(exc)
    for index, layer in enumerate(net.layers):
        provider = provider_of(layer)
        if provider is None:
            continue
        names = kernel_names(layer)
        suspects.append((any(name in text for name in names), index, layer, provider))
    if not suspects:
        return exc
    named = [s for s in suspects if s[0]] or suspects
    layers = "; ".join(who(index, layer, provider) for _, index, layer, provider in named)
    distributions = sorted({provider.split("==")[0] for *_, provider in named})
    error = LayerError(
        f"the compiled network failed in {task}: {exception_text(exc, None, with_type=True)}; "
        f"it holds plugin layers: {layers}. "
        f"Check them with `cnntool plugin check {' '.join(distributions)}`"
    )
    error.__cause__ = exc
    return error


def kernel_names(layer: Any) -> set[str]:
    names = set()
    for declared in (layer.forward_calls(True), layer.backward_calls(True)):
        for kernel, _ in declared or []:
            names.add(getattr(kernel, "__name__", ""))
    names.discard("")
    return names
