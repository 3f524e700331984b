"""Loading a verified bundle into a runnable network: its layer types installed (or a message
naming the distribution to install), its spec valid, every array present with the shape the
spec builds.
"""

from __future__ import annotations

import os
from typing import Any

from cnntool.bundle.format import Bundle, RawBundle
from cnntool.bundle.read import parse_bundle, read_bundle
from cnntool.errors import BundleError, CnntoolError
from cnntool.model.network import Network
from cnntool.model.registry import DISABLE_PLUGINS_ENV, get_registry
from cnntool.model.spec import plan_layers, validate_spec


def load_bundle(path: str | os.PathLike, registry: Any = None) -> Bundle:
    """Read, verify and build a bundle into a runnable network."""
    return build_bundle(read_bundle(path), registry)


def load_bundle_bytes(data: bytes, where: str = "<bytes>", registry: Any = None) -> Bundle:
    """Like load_bundle, for bytes already in memory (an upload, a test)."""
    return build_bundle(parse_bundle(data, where), registry)


def build_bundle(raw: RawBundle, registry: Any = None) -> Bundle:
    """Build a verified document into a network: layer types installed, spec valid, every
    array present with the shape the spec builds."""

    registry = registry or get_registry()
    where = str(raw.path)
    providers = listed if isinstance(listed := raw.meta.get("providers"), dict) else {}
    missing = missing_layer_types(raw.spec, providers, registry)
    if missing:
        raise BundleError(f"{where}: cannot build the network: " + "; ".join(missing))
    try:
        spec = validate_spec(raw.spec, registry)
    except CnntoolError as exc:
        raise BundleError(f"{where}: the stored spec is invalid: {exc}") from None

    # Shapes are checked before anything is allocated, then again on the built layers for
    # plugin layers that allocate in build() without declaring param_shapes().
    planned = plan_layers(spec, registry)
    check_arrays(raw, declared_shapes(planned, "param_shapes"), declared_shapes(planned, "state_shapes"))
    network = Network.build(spec, None, registry)
    check_arrays(
        raw,
        {key: value.shape for key, value in network.params().items()},
        {key: value.shape for key, value in network.state().items()},
    )
    network.load_arrays(raw.weights, raw.state)
    return Bundle(
        path=raw.path,
        network=network,
        spec=raw.spec,
        meta=raw.meta,
        optimizer=raw.optimizer,
        digest=raw.digest,
        weights_bytes=sum(a.nbytes for a in raw.weights.values()),
        providers={str(k): str(v) for k, v in providers.items()},
    )


def missing_layer_types(spec: dict, providers: dict, registry: Any) -> list[str]:
    """A message for each layer type of the spec that is not installed, naming its provider."""
    layers = spec.get("layers") if isinstance(spec, dict) else None
    types = (
        {layer.get("type") for layer in layers if isinstance(layer, dict)}
        if isinstance(layers, list)
        else set()
    )
    problems = []
    by_provider: dict[tuple[str, str], list[str]] = {}
    for name in sorted(t for t in types if isinstance(t, str)):
        if name in registry.types or name in registry.conflicts:
            continue
        provider = providers.get(name)
        if isinstance(provider, str) and "==" in provider:
            dist, version = provider.split("==", 1)
            by_provider.setdefault((dist, version), []).append(name)
        else:
            problems.append(
                f"layer type {name!r} is not installed and the bundle does not say which plugin provides it"
            )
    problems[:0] = [missing_distribution(names, *provider) for provider, names in sorted(by_provider.items())]
    if problems and not getattr(registry, "load_plugins", True):
        problems.append(
            f"plugins are disabled ({DISABLE_PLUGINS_ENV} is set); unset it to load installed ones"
        )
    return problems


def missing_distribution(names: list[str], dist: str, version: str) -> str:
    """Which distribution to install for layer types a bundle needs. It may be a local
    package or come from its author's own index: the same name on the public index may
    belong to someone else, so the hint does not send people there blindly."""
    kinds = (
        f"layer type {names[0]!r} is" if len(names) == 1 else f"layer types {', '.join(map(repr, names))} are"
    )
    return (
        f"{kinds} not installed; the bundle was made with distribution {dist} version {version}: install "
        f"that version from where its author publishes it (their package index: pip install --index-url "
        f"URL '{dist}=={version}'; or a local copy: pip install PATH); a package named {dist} on PyPI "
        "may belong to someone else"
    )


def declared_shapes(layers: list, method: str) -> dict[str, tuple]:
    return {
        f"{layer.name}.{key}": tuple(shape)
        for layer in layers
        for key, shape in getattr(layer, method)(layer.input_shape).items()
    }


def check_arrays(
    raw: RawBundle, expected_weights: dict[str, tuple], expected_state: dict[str, tuple]
) -> None:
    """Every parameter and buffer the spec builds is present with its shape and float32,
    and nothing else is there. All problems are reported at once."""
    problems = []
    for section, expected, found in (
        ("weights", expected_weights, raw.weights),
        ("state", expected_state, raw.state),
    ):
        for key, shape in expected.items():
            if key not in found:
                problems.append(f"{section} {key!r} is missing (expected shape {list(shape)})")
            elif found[key].shape != shape:
                problems.append(
                    f"{section} {key!r} has shape {list(found[key].shape)}, the spec builds {list(shape)}"
                )
            elif found[key].dtype.name != "float32":
                problems.append(f"{section} {key!r} has dtype {found[key].dtype.name}, expected float32")
        for key in sorted(set(found) - set(expected)):
            problems.append(f"{section} {key!r} is not a parameter of the spec's network")
    if problems:
        raise BundleError(f"{raw.path}: weights do not match the spec: " + "; ".join(problems))
