"""The conformance checks run together: `check_layer` runs every check on one layer config and
reports each as a `CheckResult`; `check_distribution` runs them on every layer type an installed
distribution provides (the examples its classes declare), each distribution's layers in a child
process (`run_isolated`), so that a crash is a failed check. `cnntool plugin check DIST` is this.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import distribution as find_distribution
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from cnntool.bundle import load_bundle, read_bundle, save_bundle
from cnntool.errors import CnntoolError, PluginError, SpecError, exception_text
from cnntool.layers.base import Layer, Shape
from cnntool.model.network import Network
from cnntool.model.registry import (
    BUILTIN_DISTRIBUTION,
    DISABLE_PLUGINS_ENV,
    GROUP,
    canonical,
    conflict_message,
    get_registry,
)
from cnntool.model.spec import format_errors
from cnntool.testing.fixtures import wrapping_spec
from cnntool.testing.gradients import check_gradients, check_shapes
from cnntool.testing.kit import (
    KernelIndexError,
    UnwrittenOutputError,
    bounds_checked,
    check_compiled,
    check_repeatable,
)


def make_layer(
    config: dict, input_shape: Shape, seed: int = 0, registry: Any = None, *, bounds_check: bool = True
) -> Layer:
    """Validate a layer config through the registry's spec model and build the layer. Its
    declared kernel calls then run bounds-checked (`cnntool.testing.kit.bounds_checked`): an index
    outside an array is an AssertionError naming the kernel, not a crash."""

    registry = registry or get_registry()
    spec = validate_layer_config(config, registry)
    layer = registry.get(config["type"])(spec.layers[0])
    layer.build(tuple(input_shape), np.random.default_rng(seed))
    return bounds_checked(layer) if bounds_check else layer


def validate_layer_config(config: dict, registry: Any) -> Any:
    """A one-layer spec model holding `config`, validated (shapes are not checked here)."""

    data = {"input_shape": [1, 1, 1], "layers": [config]}
    try:
        return registry.spec_model().model_validate(data)
    except ValidationError as exc:
        raise SpecError("invalid layer config: " + format_errors(exc, data)) from None


# Tried in turn when a layer class declares no examples: an image, then a flat input.
DEFAULT_INPUT_SHAPES: tuple[Shape, ...] = ((3, 8, 8), (16,))


# --- gradients ---------------------------------------------------------------------------------


# --- shapes ------------------------------------------------------------------------------------


# --- configs and bundles -----------------------------------------------------------------------


def check_config_round_trip(config: dict, registry: Any = None) -> dict:
    """Validate `config`, dump it to JSON, validate that again: the same config must come
    back (every hyperparameter survives being written into a spec or bundle). Returns the
    dumped config."""

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
    # Checks a finding makes pointless or unsafe, each with why it is not run. After a kernel
    # indexed outside its arrays: compiled and bundle, which run the kernels unchecked and
    # would write over memory. After an unwritten output: gradients, whose finite differences
    # of the unwritten elements pass or fail by what the buffer held.
    not_run: dict[str, str] = {}
    shape = tuple(input_shape)
    for check in (check for check in CHECKS if check in checks):
        if on_check is not None:
            on_check(check)
        where = f"check {check!r} of layer type {name!r} from {provider}: "

        def failed(message: str, check: str = check, where: str = where) -> None:
            results.append(CheckResult(name, check, False, where + message, config, shape, provider))

        if check in not_run:
            failed(not_run[check])
            continue
        try:
            note = steps[check]()
        except UnwrittenOutputError as exc:
            not_run.setdefault(
                "gradients", f"not run: forward leaves part of its output unwritten (check {check!r})"
            )
            failed(str(exc))
        except KernelIndexError as exc:
            for later in ("compiled", "bundle"):
                not_run.setdefault(later, f"not run: a kernel indexed outside its arrays in check {check!r}")
            failed(str(exc))
        except (AssertionError, CnntoolError) as exc:
            failed(str(exc))
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            failed(f"{type(exc).__name__}: {exc} (at {Path(frame.filename).name}:{frame.lineno})")
        else:
            message = note if isinstance(note, str) and note.startswith("skipped") else ""
            results.append(CheckResult(name, check, True, message, config, shape, provider))
    return results


def layer_examples(layer_class: type[Layer], name: str) -> list[tuple[dict, Shape]]:
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
            message = f"{layer_class.__name__}.examples() raised {exception_text(exc, None, with_type=True)}"
            results.append(CheckResult(entry.name, "load", False, message))
            continue
        if isolate:
            found = run_isolated(examples, seed=seed, checks=checks)
            results += [CheckResult.from_dict(data) for data in found]
            continue
        for config, input_shape in examples:
            results.extend(check_layer(config, input_shape, seed=seed, registry=registry, checks=checks))
    return results


def no_layer_types_message(distribution: str, registry: Any) -> str:
    """Why a distribution has no layer types in this registry."""

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


# --- a child process ------------------------------------------------------------------------

CHILD = """
import json, sys
from cnntool.testing.conformance import child_main
child_main(json.loads(sys.stdin.read()))
"""


def child_main(job: dict) -> None:
    """In the child: check each example, printing one JSON line as each check starts and
    one with its result."""

    for index, (config, shape) in enumerate(job["examples"]):
        shape = tuple(tuple(s) for s in shape) if shape and isinstance(shape[0], list) else tuple(shape)

        def started(check: str, index: int = index) -> None:
            print(json.dumps({"example": index, "started": check}), flush=True)

        for result in check_layer(
            config, shape, seed=job["seed"], on_check=started, checks=tuple(job["checks"])
        ):
            print(json.dumps({"example": index, "result": result.as_dict()}), flush=True)


def run_isolated(
    examples: list[tuple[dict, Any]],
    *,
    seed: int = 0,
    checks: tuple[str, ...] | None = None,
    timeout: float = 1800,
) -> list[dict]:
    """Check the examples in a child process; a child that dies (a segmentation fault in a
    kernel) makes a failed result of the check it was running, and the examples after it
    go on in a new child. Returns result dicts (CheckResult.as_dict)."""

    wanted = [check for check in CHECKS if checks is None or check in checks]
    results: list[dict] = []
    start = 0
    while start < len(examples):
        job = {"examples": [[c, list_shape(s)] for c, s in examples[start:]], "seed": seed, "checks": wanted}
        child = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        current: tuple[int, str] | None = None
        done = 0
        for line in child.stdout.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a plugin printing to stdout
            if not isinstance(event, dict) or "example" not in event:
                continue
            if "started" in event:
                current = (event["example"], event["started"])
            elif "result" in event:
                results.append(event["result"])
                done = event["example"] + 1 if event["result"]["check"] == wanted[-1] else done
        if child.returncode == 0:
            break
        index = current[0] if current is not None else done
        check = current[1] if current is not None else wanted[0]
        config, shape = examples[start + index]
        results.append(crash_result(config, shape, check, child.returncode, child.stderr))
        skipped = wanted[wanted.index(check) + 1 :] if check in wanted else ()
        results += [
            {"type": config.get("type", "?"), "check": later, "ok": False, "config": config,
             "input_shape": list_shape(shape), "message": f"not run: the process died during check {check!r}"}
            for later in skipped
        ]  # fmt: skip
        start += index + 1
    return results


def crash_result(config: dict, shape: Any, check: str, returncode: int, stderr: str) -> dict:

    try:
        provider = get_registry().provider(config.get("type", "?"))
    except Exception:
        provider = "?"
    how = f"exit code {returncode}"
    if returncode < 0:
        try:
            how = f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"signal {-returncode}"
    tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:]
    return {
        "type": config.get("type", "?"),
        "check": check,
        "ok": False,
        "config": config,
        "input_shape": list_shape(shape),
        "provider": provider,
        "message": (
            f"check {check!r} of layer type {config.get('type')!r} from {provider}: the checking process "
            f"died ({how}) running the layer: a kernel called by hand (not declared) likely read or "
            "wrote outside its arrays, which numba does not check in compiled code; declare the kernel "
            "calls so the kit runs them bounds-checked" + (f" (last output: {tail[0]})" if tail else "")
        ),
    }


def list_shape(shape: Any) -> Any:
    return json.loads(json.dumps(shape)) if shape is not None else None
