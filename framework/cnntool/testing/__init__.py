"""Checks any layer type should pass, for cnntool's own tests and for plugin authors.

    from cnntool.testing import check_layer, check_gradients, make_layer
    layer = make_layer({"type": "leaky_relu"}, input_shape=(3, 8, 8))
    check_gradients(layer, batch=2)
    for result in check_layer({"type": "leaky_relu"}, (3, 8, 8)):
        assert result.ok, result.message

The conformance checks, each a function that raises AssertionError saying what is wrong:

- `check_gradients`: `backward` against central finite differences;
- `check_shapes`: `compute_output_shape` and `param_shapes` against what `forward`,
  `backward` and `build` really produce, and (declared kernel calls) what the kernels write
  against the declared output;
- `check_repeatable` (cnntool.testing.kit): forward twice and backward twice give the same results
  (a backward accumulating into its gradients passes every check that calls it once);
- `check_compiled` (cnntool.testing.kit): a layer declaring its kernel calls runs compiled and layer
  by layer, which agree in forward, backward, a training step and with threads;
- `check_config_round_trip`: a config dumped to JSON and validated again is the same config;
- `check_bundle_round_trip`: a small network holding the layer, saved and loaded, gives the
  same parameters and outputs, and its bundle names the layer's provider.

Declared kernel calls run bounds-checked during the checks (`make_layer` does it), so a
kernel indexing outside its arrays fails a check naming the layer and the kernel instead of
crashing. `check_layer` runs them all on one config; `check_distribution` on every layer type a
distribution provides, with the examples each layer class declares (`examples()`, below),
which is what `cnntool plugin check DIST` does.
"""

from __future__ import annotations

import json
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnntool.errors import CnntoolError, PluginError
from cnntool.layers.base import Layer, Shape

# Tried in turn when a layer class declares no examples: an image, then a flat input.
DEFAULT_INPUT_SHAPES: tuple[Shape, ...] = ((3, 8, 8), (16,))


def make_layer(
    config: dict, input_shape: Shape, seed: int = 0, registry: Any = None, *, bounds_check: bool = True
) -> Layer:
    """Validate a layer config through the registry's spec model and build the layer. Its
    declared kernel calls then run bounds-checked (`cnntool.testing.kit.bounds_checked`): an index
    outside an array is an AssertionError naming the kernel, not a crash."""
    from cnntool.model.registry import get_registry
    from cnntool.testing.kit import bounds_checked

    registry = registry or get_registry()
    spec = validate_layer_config(config, registry)
    layer = registry.get(config["type"])(spec.layers[0])
    layer.build(tuple(input_shape), np.random.default_rng(seed))
    return bounds_checked(layer) if bounds_check else layer


def validate_layer_config(config: dict, registry: Any) -> Any:
    """A one-layer spec model holding `config`, validated (shapes are not checked here)."""
    from pydantic import ValidationError

    from cnntool.errors import SpecError
    from cnntool.model.spec import format_errors

    data = {"input_shape": [1, 1, 1], "layers": [config]}
    try:
        return registry.spec_model().model_validate(data)
    except ValidationError as exc:
        raise SpecError("invalid layer config: " + format_errors(exc, data)) from None


# --- gradients ---------------------------------------------------------------------------------


def check_gradients(
    layer: Layer,
    *,
    batch: int = 2,
    x: np.ndarray | None = None,
    eps: float = 1e-2,
    rtol: float = 2e-2,
    atol: float = 2e-3,
    samples: int = 24,
    seed: int = 0,
    training: bool = False,
) -> dict[str, float]:
    """Compare `backward` with central differences of f = sum(forward(x) * R), R fixed and
    random, on sampled coordinates of the input and of every parameter; return the worst
    error per array ('x' and each parameter). `x` defaults to standard-normal inputs.

    Where f has a kink within `eps` of a sample (ReLU at 0, a max-pooling tie) the central
    difference is meaningless; such a sample passes if the analytic gradient equals the
    one-sided difference on either side. More than half the samples at kinks is an error:
    choose a smaller `eps` or another `x`."""
    rng = np.random.default_rng(seed)
    xs = inputs_of(layer, batch, rng, x)
    given = xs if layer.multi_input else xs[0]
    out = layer.forward(given, training=training).copy()
    projection = rng.standard_normal(out.shape).astype(np.float32)

    def objective() -> float:
        return float(np.sum(layer.forward(given, training=training).astype(np.float64) * projection))

    center = objective()
    layer.need_input_grad = True
    names = input_names(layer)
    results = layer.backward(projection.copy())
    analytic = {name: grad.copy() for name, grad in zip(names, per_input(layer, results), strict=True)}
    analytic.update({key: grad.copy() for key, grad in layer.grads.items()})
    targets = {**dict(zip(names, xs, strict=True)), **layer.params}
    worst = {}
    for key, array in targets.items():
        flat = array.reshape(-1)
        picks = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
        errors = []
        for i in picks:
            original = flat[i]
            flat[i] = original + eps
            plus = objective()
            flat[i] = original - eps
            minus = objective()
            flat[i] = original
            numeric = (plus - minus) / (2 * eps)
            exact = float(analytic[key].reshape(-1)[i])

            def close(value: float, exact: float = exact) -> bool:
                return abs(value - exact) <= atol + rtol * abs(value)

            if close(numeric):
                errors.append(abs(numeric - exact))
                continue
            right, left = (plus - center) / eps, (center - minus) / eps
            if not close(left, right) and (close(left) or close(right)):
                continue  # a kink between x - eps and x + eps
            where = f"{key}[{', '.join(map(str, np.unravel_index(i, array.shape)))}]"
            raise AssertionError(
                f"{layer.name}: gradient of {where} is {exact:.6g}, finite differences give {numeric:.6g}"
            )
        if len(errors) * 2 < len(picks):
            raise AssertionError(
                f"{layer.name}: {len(picks) - len(errors)} of {len(picks)} samples of {key} lie at kinks "
                f"of the output; use a smaller eps or another input"
            )
        worst[key] = max(errors)
    return worst


def inputs_of(layer: Layer, batch: int, rng: np.random.Generator, x: Any = None) -> list[np.ndarray]:
    """The layer's inputs as a list (one array, or one per input of a merge layer):
    `x` when given, else standard-normal arrays of the input shapes."""
    shapes = list(layer.input_shape) if layer.multi_input else [layer.input_shape]
    if x is None:
        return [rng.standard_normal((batch, *shape)).astype(np.float32) for shape in shapes]
    return [np.ascontiguousarray(a, np.float32) for a in (x if layer.multi_input else [x])]


def input_names(layer: Layer) -> list[str]:
    """'x', or 'x0', 'x1', ... for the inputs of a merge layer, in messages."""
    return [f"x{k}" for k in range(len(layer.input_shape))] if layer.multi_input else ["x"]


def per_input(layer: Layer, result: Any) -> list[Any]:
    """What backward returned, as a list with one gradient per input."""
    return list(result) if layer.multi_input else [result]


# --- shapes ------------------------------------------------------------------------------------


def check_shapes(layer: Layer, *, batch: int = 2, seed: int = 0) -> None:
    """What the layer declares equals what it does: `build` allocates `param_shapes` and
    `state_shapes`, `forward` returns float32 (batch, *compute_output_shape), `backward`
    returns the input's shape and fills a gradient of every parameter's shape."""
    input_shape = layer.input_shape
    declared = tuple(layer.compute_output_shape(input_shape))
    problems = []
    if tuple(layer.output_shape) != declared:
        problems.append(f"build returned output shape {layer.output_shape}, compute_output_shape {declared}")
    for what, shapes, arrays in (
        ("parameter", layer.param_shapes(input_shape), layer.params),
        ("state", layer.state_shapes(input_shape), layer.state),
    ):
        if set(shapes) != set(arrays):
            problems.append(f"declares {what}s {sorted(shapes)} but build made {sorted(arrays)}")
        for key in sorted(set(shapes) & set(arrays)):
            if tuple(arrays[key].shape) != tuple(shapes[key]) or arrays[key].dtype != np.float32:
                problems.append(
                    f"{what} {key!r} is {arrays[key].dtype}{list(arrays[key].shape)}, "
                    f"declared float32{list(shapes[key])}"
                )
    if set(layer.grads) != set(layer.params):
        problems.append(f"grads {sorted(layer.grads)} do not match params {sorted(layer.params)}")
    xs = inputs_of(layer, batch, np.random.default_rng(seed))
    out = layer.forward(xs if layer.multi_input else xs[0], training=True)
    if tuple(out.shape) != (batch, *declared) or out.dtype != np.float32:
        problems.append(
            f"forward returned {out.dtype}{list(out.shape)} for input "
            f"{', '.join(str(list(x.shape)) for x in xs)}, expected float32{[batch, *declared]} from "
            "compute_output_shape"
        )
    else:
        layer.need_input_grad = True
        results = per_input(layer, layer.backward(np.ones_like(out)))
        if len(results) != len(xs):
            problems.append(f"backward returned {len(results)} gradients for {len(xs)} inputs")
        for name, x, grad_x in zip(input_names(layer), xs, results, strict=False):
            if tuple(grad_x.shape) != x.shape or grad_x.dtype != np.float32:
                problems.append(
                    f"backward returned {grad_x.dtype}{list(grad_x.shape)} for {name}, "
                    f"expected float32{list(x.shape)}"
                )
        for key, grad in layer.grads.items():
            if key in layer.params and grad.shape != layer.params[key].shape:
                problems.append(
                    f"grads[{key!r}] has shape {list(grad.shape)}, "
                    f"its parameter {list(layer.params[key].shape)}"
                )
    if not problems:
        from cnntool.testing.kit import check_written

        problems += check_written(layer, xs)
    if problems:
        raise AssertionError(f"{layer.name}: " + "; ".join(problems))


# --- configs and bundles -----------------------------------------------------------------------


def check_config_round_trip(config: dict, registry: Any = None) -> dict:
    """Validate `config`, dump it to JSON, validate that again: the same config must come
    back (every hyperparameter survives being written into a spec or bundle). Returns the
    dumped config."""
    from cnntool.model.registry import get_registry

    registry = registry or get_registry()
    first = validate_layer_config(config, registry).layers[0]
    dumped = json.loads(json.dumps(first.model_dump(mode="json", exclude_none=True)))
    again = validate_layer_config(dumped, registry).layers[0]
    if again != first:
        raise AssertionError(
            f"{config['type']}: config {first!r} dumps to {dumped}, which validates to {again!r}"
        )
    return dumped


def check_bundle_round_trip(config: dict, input_shape: Shape, *, seed: int = 0, registry: Any = None) -> None:
    """Save a small network holding the layer (randomised weights and state) to a bundle and
    load it back: same spec, parameters, state and outputs, and the bundle records the
    distribution providing the layer type."""
    from cnntool.bundle import load_bundle, read_bundle, save_bundle
    from cnntool.model.network import Network
    from cnntool.model.registry import get_registry

    registry = registry or get_registry()
    spec = wrapping_spec(config, input_shape)
    rng = np.random.default_rng(seed)
    net = Network.from_spec(spec, seed=seed, registry=registry)
    for value in net.params().values():
        value += rng.normal(0.0, 0.1, value.shape).astype(np.float32)
    for value in net.state().values():
        value += rng.uniform(0.0, 0.1, value.shape).astype(np.float32)
    x = rng.standard_normal((3, *net.input_shape)).astype(np.float32)
    before = net.forward(x)
    name = config["type"]
    with tempfile.TemporaryDirectory(prefix="cnntool-check-") as folder:
        path = Path(folder) / "check.cnnb"
        save_bundle(net, path)
        stored = read_bundle(path).meta.get("providers", {}).get(name)
        loaded = load_bundle(path, registry).network
    problems = []
    if stored != registry.provider(name):
        problems.append(
            f"the bundle records provider {stored!r} for {name!r}, expected {registry.provider(name)!r}"
        )
    if loaded.spec_dict() != net.spec_dict():
        problems.append(
            f"the spec changed: saved {net.spec_dict()['layers']}, loaded {loaded.spec_dict()['layers']}"
        )
    for what, saved, back in (
        ("parameter", net.params(), loaded.params()),
        ("state", net.state(), loaded.state()),
    ):
        for key in sorted(saved):
            if key not in back or not np.array_equal(saved[key], back[key]):
                problems.append(f"{what} {key!r} differs after loading")
    after = loaded.forward(x)
    if not np.allclose(before, after, rtol=1e-5, atol=1e-6):
        problems.append(
            f"outputs differ after loading by up to {float(np.max(np.abs(before - after))):.3g}: the layer "
            "computes with something that is not a parameter, state or config value"
        )
    if problems:
        raise AssertionError(f"{name}: bundle round trip: " + "; ".join(problems))


def wrapping_spec(config: dict, input_shape: Any) -> dict:
    """A classifier spec around one layer: an image input goes straight in, a flat input
    (features,) is given as (features, 1, 1) and flattened first; flatten and dense follow.
    A merge layer (several input shapes) reads one branch per input, made from the network
    input by a 1x1 convolution (images of one size) or a dense layer (flat inputs)."""
    if input_shape and isinstance(input_shape[0], (tuple, list)):
        return merging_spec(config, [tuple(shape) for shape in input_shape])
    shape = tuple(input_shape)
    if len(shape) == 3:
        layers, spec_input = [config], list(shape)
    elif len(shape) == 1:
        layers, spec_input = [{"type": "flatten"}, config], [shape[0], 1, 1]
    else:
        raise PluginError(
            f"{config['type']}: example input shape {shape} is neither (channels, height, width) "
            "nor (features,)"
        )
    return {
        "name": f"check-{config['type']}",
        "input_shape": spec_input,
        "layers": [*layers, {"type": "flatten"}, {"type": "dense", "units": 3}],
    }


def merging_spec(config: dict, shapes: list[Shape]) -> dict:
    if all(len(shape) == 3 and shape[1:] == shapes[0][1:] for shape in shapes):
        spec_input, layers = list(shapes[0]), []
        branches = [
            {
                "type": "conv2d",
                "name": f"branch{k}",
                "inputs": ["input"],
                "filters": shape[0],
                "kernel_size": 1,
            }
            for k, shape in enumerate(shapes)
        ]
    elif all(len(shape) == 1 for shape in shapes):
        spec_input, layers = [shapes[0][0], 1, 1], [{"type": "flatten", "name": "flat"}]
        branches = [
            {"type": "dense", "name": f"branch{k}", "inputs": ["flat"], "units": shape[0]}
            for k, shape in enumerate(shapes)
        ]
    else:
        raise PluginError(
            f"{config['type']}: example input shapes {shapes} are neither images of one size nor flat"
        )
    merge = {**config, "inputs": [branch["name"] for branch in branches]}
    return {
        "name": f"check-{config['type']}",
        "input_shape": spec_input,
        "layers": [*layers, *branches, merge, {"type": "flatten"}, {"type": "dense", "units": 3}],
    }


# --- running every check -----------------------------------------------------------------------


@dataclass
class CheckResult:
    """The outcome of one check of one layer type on one example config."""

    type: str
    check: str
    ok: bool
    message: str = ""
    config: dict | None = None
    input_shape: Shape | None = None
    provider: str | None = None

    @property
    def skipped(self) -> bool:
        return self.ok and self.message.startswith("skipped")

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "check": self.check,
            "ok": self.ok,
            "message": self.message,
            "config": self.config,
            "input_shape": json.loads(json.dumps(self.input_shape)) if self.input_shape is not None else None,
            "provider": self.provider,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        shape = data.get("input_shape")
        return cls(data["type"], data["check"], data["ok"], data.get("message", ""), data.get("config"),
                   as_shape(shape) if shape is not None else None, data.get("provider"))  # fmt: skip


# In the order they run. `repeat` and `compiled` catch what a single call cannot: a backward
# that accumulates, and a compiled plan that disagrees with layer-by-layer execution.
CHECKS = ("config", "shapes", "gradients", "repeat", "compiled", "bundle")


def check_layer(
    config: dict,
    input_shape: Shape,
    *,
    seed: int = 0,
    registry: Any = None,
    on_check: Any = None,
    checks: tuple[str, ...] = CHECKS,
) -> list[CheckResult]:
    """Run every conformance check on one layer config and input shape. A check that raises
    is a failed result whose message says which check, which layer type and distribution,
    and what was expected and found; the others still run. `on_check(name)` is called as
    each check starts; `checks` picks some of CHECKS (in their order)."""
    from cnntool.model.registry import get_registry
    from cnntool.testing.kit import KernelIndexError, check_compiled, check_repeatable

    registry = registry or get_registry()
    name = config.get("type", "?")
    try:
        provider = registry.provider(name)
    except CnntoolError:
        provider = "?"

    def gradients() -> None:
        layer = make_layer(config, input_shape, seed, registry)
        try:
            check_gradients(layer, seed=seed)
        except AssertionError:
            # Saturating layers (softmax) need a finer step; a wrong backward fails both.
            check_gradients(make_layer(config, input_shape, seed, registry), seed=seed, eps=1e-3)

    steps = {
        "config": lambda: check_config_round_trip(config, registry),
        "shapes": lambda: check_shapes(make_layer(config, input_shape, seed, registry), seed=seed),
        "gradients": gradients,
        "repeat": lambda: check_repeatable(make_layer(config, input_shape, seed, registry), seed=seed),
        "compiled": lambda: check_compiled(config, input_shape, seed=seed, registry=registry),
        "bundle": lambda: check_bundle_round_trip(config, input_shape, seed=seed, registry=registry),
    }
    results = []
    out_of_bounds = None  # the first check whose kernel indexed outside its arrays
    for check in (check for check in CHECKS if check in checks):
        if on_check is not None:
            on_check(check)
        where = f"check {check!r} of layer type {name!r} from {provider}: "
        if out_of_bounds is not None and check in ("compiled", "bundle"):
            # These run the kernels unchecked (compiled): they would write over memory.
            message = f"not run: a kernel indexed outside its arrays in check {out_of_bounds!r}"
            results.append(
                CheckResult(name, check, False, where + message, config, tuple(input_shape), provider)
            )
            continue
        try:
            note = steps[check]()
        except KernelIndexError as exc:
            out_of_bounds = out_of_bounds or check
            results.append(
                CheckResult(name, check, False, where + str(exc), config, tuple(input_shape), provider)
            )
        except (AssertionError, CnntoolError) as exc:
            results.append(
                CheckResult(name, check, False, where + str(exc), config, tuple(input_shape), provider)
            )
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            message = f"{type(exc).__name__}: {exc} (at {Path(frame.filename).name}:{frame.lineno})"
            results.append(
                CheckResult(name, check, False, where + message, config, tuple(input_shape), provider)
            )
        else:
            message = note if isinstance(note, str) and note.startswith("skipped") else ""
            results.append(CheckResult(name, check, True, message, config, tuple(input_shape), provider))
    return results


def layer_examples(layer_class: type, name: str) -> list[tuple[dict, Shape]]:
    """The (config, input shape) pairs to check a layer type on: the class's own
    `examples()` when it declares them, else its default config on the first of
    DEFAULT_INPUT_SHAPES it accepts."""
    declared = getattr(layer_class, "examples", None)
    if declared is not None:
        examples = [(dict(config), as_shape(shape)) for config, shape in declared()]
        if not examples:
            raise PluginError(f"{layer_class.__name__}.examples() returned no examples")
        for config, _ in examples:
            if config.get("type") != name:
                raise PluginError(
                    f"{layer_class.__name__}.examples() gives config {config} for layer type {name!r}; "
                    f"expected 'type': {name!r}"
                )
        return examples
    config = {"type": name}
    try:
        layer = layer_class(layer_class.Config(**config))
    except Exception as exc:
        raise PluginError(
            f"{layer_class.__name__} declares no examples() and its default config {config} is invalid "
            f"({type(exc).__name__}); add a classmethod examples() returning [(config, input_shape), ...]"
        ) from None
    for shape in DEFAULT_INPUT_SHAPES:
        try:
            layer.compute_output_shape(shape)
        except CnntoolError:
            continue
        return [(config, shape)]
    raise PluginError(
        f"{layer_class.__name__} declares no examples() and accepts none of the input shapes "
        f"{', '.join(map(str, DEFAULT_INPUT_SHAPES))}; add a classmethod examples()"
    )


def as_shape(shape: Any) -> Any:
    """An example's input shape as a tuple, or a tuple of them for a merge layer."""
    if shape and isinstance(shape[0], (tuple, list)):
        return tuple(tuple(part) for part in shape)
    return tuple(shape)


def check_distribution(
    distribution: str,
    *,
    seed: int = 0,
    registry: Any = None,
    isolate: bool = False,
    checks: tuple[str, ...] = CHECKS,
) -> list[CheckResult]:
    """Run every check on every layer type `distribution` provides, with each type's
    examples. A type that cannot be loaded or has no usable examples is one failed 'load'
    result naming the cause. With `isolate`, the checks run in a child process (as
    `cnntool plugin check` runs them), so that a layer crashing the process is a failed
    check."""
    from cnntool.model.registry import conflict_message, describe, get_registry

    registry = registry or get_registry()
    entries = registry.distribution_entries(distribution)
    if not entries:
        raise PluginError(no_layer_types_message(distribution, registry))
    results = []
    for entry in entries:
        try:
            if registry.types.get(entry.name) is not entry:  # lost its name to another distribution
                raise PluginError(entry.error or conflict_message(entry.name, registry.conflicts[entry.name]))
            layer_class = registry.get(entry.name)
            examples = layer_examples(layer_class, entry.name)
        except CnntoolError as exc:
            results.append(CheckResult(entry.name, "load", False, str(exc)))
            continue
        except Exception as exc:  # examples() is plugin code too
            message = f"{layer_class.__name__}.examples() raised {describe(exc)}"
            results.append(CheckResult(entry.name, "load", False, message))
            continue
        if isolate:
            from cnntool.testing.kit import run_isolated

            found = run_isolated(examples, seed=seed, checks=checks)
            results += [CheckResult.from_dict(data) for data in found]
            continue
        for config, input_shape in examples:
            results.extend(check_layer(config, input_shape, seed=seed, registry=registry, checks=checks))
    return results


def no_layer_types_message(distribution: str, registry: Any) -> str:
    """Why a distribution has no layer types in this registry."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as find_distribution

    from cnntool.model.registry import BUILTIN_DISTRIBUTION, DISABLE_PLUGINS_ENV, GROUP, canonical

    try:
        found = find_distribution(distribution)
    except PackageNotFoundError:
        return f"distribution {distribution!r} is not installed (pip install {distribution})"
    if not registry.load_plugins and canonical(distribution) != BUILTIN_DISTRIBUTION:
        return f"plugins are disabled ({DISABLE_PLUGINS_ENV} is set); unset it to check {distribution}"
    return (
        f"distribution {found.name} {found.version} declares no layer types "
        f'(no entry points in group "{GROUP}")'
    )
