"""The conformance checks that catch what hurts in training, not only in one call.

- `check_repeatable`: forward twice and backward twice on the same input give the same
  results (a backward that accumulates into its gradients, `grad[c] += ...`, passes a
  gradient check, which calls it once, and then makes training collapse);
- `check_compiled`: a layer that declares its kernel calls runs both ways, compiled into a
  plan (`cnntool.compile.plan`) and layer by layer, and the two agree in forward, backward, a
  training step with an optimizer update, and with the batch cut across threads;
- `bounds_checked(layer)`: the layer's own kernels re-compiled with numba's bounds checks,
  so that an index outside an array is an error naming the kernel and its arrays instead of
  memory silently overwritten (or a segmentation fault); `cnntool.testing` runs every check
  of a declared-call layer this way;
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

from cnntool.errors import CnntoolError
from cnntool.layers.base import Layer, Ref, Step, Sync, kernel_parameters
from cnntool.model.network import Network
from cnntool.model.registry import get_registry
from cnntool.system import threads as settings
from cnntool.testing.fixtures import input_names, inputs_of, per_input, wrapping_spec
from cnntool.training.optim import SGD

# The compiled plan and layer-by-layer execution add the same numbers in other orders (and
# fused kernels round once less), so they agree to float32 rounding, not bit for bit.
RTOL = 1e-4
ATOL = 1e-5
# A batch that the plan cuts into two pieces of MIN_EXAMPLES_PER_THREAD (cnntool.model.network).
SPLIT_BATCH = 16


class KernelIndexError(AssertionError):
    """A bounds-checked kernel indexed outside one of its arrays."""


class UnwrittenOutputError(AssertionError):
    """A layer's kernels left part of its declared output unwritten (check_written)."""


# --- bounds-checked kernels ------------------------------------------------------------------

_checked: dict[Any, Any] = {}


def bounds_checked_kernel(kernel: Any) -> Any:
    """The numba kernel re-compiled from its Python source with bounds checks (not cached,
    so the checked code never replaces the fast one in numba's cache). cnntool's own kernels
    are returned as they are: its test suite checks them, and re-compiling them would cost
    seconds per check. Functions that are not numba kernels are returned as they are."""
    if kernel in _checked:
        return _checked[kernel]
    py_func = getattr(kernel, "py_func", None)
    if py_func is None or getattr(kernel, "__module__", "").split(".")[0] == "cnntool":
        _checked[kernel] = kernel
        return kernel

    options = {
        k: v for k, v in getattr(kernel, "targetoptions", {}).items() if k not in ("cache", "nopython")
    }
    _checked[kernel] = njit(**{**options, "boundscheck": True})(py_func)
    return _checked[kernel]


def describe_argument(ref: Any, value: Any) -> str:
    """'out=buf("out") float32[2, 3, 7, 8]' for one kernel argument, in messages."""
    where = ""
    if isinstance(ref, Ref):
        where = {"x": "X", "grad_out": "GRAD_OUT"}.get(ref.kind, f'{ref.kind}("{ref.name}")')
        if ref.kind == "x" and ref.name:
            where = f"xs({ref.name})"
    if isinstance(value, np.ndarray):
        return f"{where} {value.dtype}{list(value.shape)}".strip()
    return repr(value)


def guarded(layer: Layer, kernel: Any, refs: tuple) -> Any:
    """A function calling the bounds-checked kernel that turns an index outside an array into
    KernelIndexError naming the layer, the kernel and every argument's shape."""
    checked = bounds_checked_kernel(kernel)
    name = getattr(kernel, "__name__", repr(kernel))

    def call(*values: Any) -> None:
        try:
            checked(*values)
        except IndexError as exc:
            arguments = ", ".join(
                f"{param}={describe_argument(ref, value)}"
                for param, ref, value in zip(kernel_parameters(kernel), refs, values, strict=False)
            )
            raise KernelIndexError(
                f"{layer.name}: kernel {name}({arguments}) indexed outside one of its arrays ({exc}); "
                "an array is smaller than the kernel assumes: check compute_output_shape, buffers() "
                "and scratch_arrays() against what the kernel reads and writes"
            ) from None

    return call


def bounds_checked(layer: Layer) -> Layer:
    """Make this layer (this object only) run its declared kernel calls bounds-checked when
    it runs layer by layer; returns the layer."""
    if getattr(layer, "_bounds_checked", False) or layer.view:
        return layer
    run = layer._run

    def checked_run(calls: Sequence[Step], n: int, result: Any, x: Any, grad_out: np.ndarray | None) -> Any:
        wrapped: list[Step] = []
        for call in calls:
            if isinstance(call, Sync):  # batch norm's meeting point: nothing to check
                wrapped.append(call)
            else:
                kernel, args = call
                wrapped.append((guarded(layer, kernel, args), args))
        return run(wrapped, n, result, x, grad_out)

    layer._run = checked_run  # type: ignore[method-assign]
    layer._bounds_checked = True  # type: ignore[attr-defined]
    return layer


def declares_calls(layer: Layer) -> bool:
    return layer.view or layer.forward_calls(True) is not None


# --- written outputs -------------------------------------------------------------------------


def check_written(layer: Layer, xs: list[np.ndarray]) -> list[str]:
    """For a declared-call layer: run forward with its output buffer filled with NaN and say
    where the kernels left elements of the declared output unwritten (a kernel computing a
    smaller shape than compute_output_shape declares)."""
    if layer.view or layer.forward_calls(True) is None or layer.forward_result.kind != "buf":
        return []
    name = layer.forward_result.name
    spec = layer.buffers().get(name)
    if spec is None:
        return [f"forward_result {layer.forward_result} is not one of buffers() {sorted(layer.buffers())}"]
    n = xs[0].shape[0]
    sentinel = layer.buffer(name, (n, *spec.shape), spec.dtype)
    if sentinel.dtype.kind != "f":
        return []
    sentinel.fill(np.nan)
    if any(np.isnan(x).any() for x in xs):
        return []
    out = layer.forward(xs if layer.multi_input else xs[0], training=True)
    unwritten = int(np.isnan(out).sum())
    if not unwritten:
        return []
    first = index_of(int(np.flatnonzero(np.isnan(out))[0]), out.shape)
    return [
        f"forward's kernels left {unwritten} of {out.size} elements of buf({name!r}) unwritten (first at "
        f"{list(first)}); its declared shape {[n, *spec.shape]} (from compute_output_shape "
        f"{list(layer.compute_output_shape(layer.input_shape))}) is larger than what the kernels write"
    ]


# --- repeatable ------------------------------------------------------------------------------


def check_repeatable(layer: Layer, *, batch: int = 2, seed: int = 0, training: bool = True) -> None:
    """forward twice on one input gives the same output; forward and backward twice on the
    same input and gradient give the same input gradient and parameter gradients (backward
    overwrites `grads`, it does not accumulate)."""

    rng = np.random.default_rng(seed)
    xs = inputs_of(layer, batch, rng)
    given = xs if layer.multi_input else xs[0]
    layer.random[1] = 1  # the same draw both times, for random layers
    first = layer.forward(given, training=training).copy()
    layer.random[1] = 1
    second = layer.forward(given, training=training).copy()
    problems = []
    if not np.array_equal(first, second, equal_nan=True):
        problems.append(
            f"forward called twice on the same input gave outputs differing by up to "
            f"{max_difference(first, second):.3g}: it keeps something from one call to the next"
        )
    grad_out = rng.standard_normal(first.shape).astype(np.float32)
    layer.need_input_grad = True
    runs = []
    for _ in range(2):
        # A forward before each backward, as in training: a layer may reuse what forward
        # saved as scratch in backward (conv2d overwrites its saved columns).
        layer.random[1] = 1
        layer.forward(given, training=training)
        results = per_input(layer, layer.backward(grad_out.copy()))
        arrays = {name: np.array(g, copy=True) for name, g in zip(input_names(layer), results, strict=False)}
        arrays.update({f"grads[{key!r}]": value.copy() for key, value in layer.grads.items()})
        runs.append(arrays)
    for key in runs[0]:
        once, twice = runs[0][key], runs[1][key]
        if once.shape == twice.shape and np.array_equal(once, twice, equal_nan=True):
            continue
        problems.append(
            f"backward called twice on the same gradient gave {key} {describe_change(once, twice)}"
        )
    if problems:
        raise AssertionError(f"{layer.name}: " + "; ".join(problems))


def describe_change(once: np.ndarray, twice: np.ndarray) -> str:
    """What changed between two backward results; names accumulation when the second is
    about twice the first."""
    if once.shape != twice.shape:
        return f"of shape {list(once.shape)} the first time and {list(twice.shape)} the second"
    where = int(np.argmax(np.abs(once.astype(np.float64) - twice)))
    index = index_of(where, once.shape) if once.ndim else []
    a, b = float(once.reshape(-1)[where]), float(twice.reshape(-1)[where])
    text = f"{a:.6g} at {index} the first time and {b:.6g} the second"
    if np.allclose(twice, 2 * once, rtol=1e-3, atol=1e-6):
        text += (
            ": the second is twice the first, so backward adds to the gradient (grad += ...) instead "
            "of overwriting it; assign it (or zero it first): training would otherwise sum every "
            "step's gradients"
        )
    return text


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0


# --- compiled against layer by layer ----------------------------------------------------------


def check_compiled(config: dict, input_shape: Any, *, seed: int = 0, registry: Any = None) -> str | None:
    """For a layer that declares its kernel calls: networks holding it (the kit's wrapping
    spec, and a stride-1 conv2d before it when the layer declares an epilogue the convolution
    may fuse, and a max-pool after it) run compiled and layer by layer, and must agree in
    forward (both modes), predictions, backward, a training step followed by an SGD update,
    and a training step on a batch cut across two threads. Returns why the check does not
    apply (a hand-written layer), or None."""

    registry = registry or get_registry()
    layer_class = registry.get(config["type"])
    probe = layer_class(layer_class.Config.model_validate(config))
    if type(probe).forward_calls is Layer.forward_calls and not probe.view:
        return "skipped: the layer writes forward/backward by hand, so networks holding it run layer by layer"
    specs = [wrapping_spec(config, input_shape)]
    fused = fusing_spec(config, input_shape, registry)
    if fused is not None:
        specs.append(fused)
    for spec in specs:
        compare_paths(spec, config["type"], seed, registry)
    return None


def fusing_spec(config: dict, input_shape: Any, registry: Any) -> dict | None:
    """A spec with a stride-1 conv2d right before the layer, when the layer is an activation
    a convolution may apply in its own kernels (it declares an `epilogue`)."""
    if not (
        isinstance(input_shape, tuple) and len(input_shape) == 3 and not isinstance(input_shape[0], tuple)
    ):
        return None
    layer_class = registry.get(config["type"])
    if layer_class(layer_class.Config.model_validate(config)).epilogue is None:
        return None
    channels = input_shape[0]
    conv = {"type": "conv2d", "name": "conv_before", "filters": channels, "kernel_size": 3, "padding": "same"}
    # A 2x2 max-pool after it, when the image is large enough: inference may fuse all three.
    pool = [{"type": "maxpool2d", "pool_size": 2}] if min(input_shape[1:]) >= 2 else []
    return {
        "name": f"check-fused-{config['type']}",
        "input_shape": list(input_shape),
        "layers": [conv, config, *pool, {"type": "flatten"}, {"type": "dense", "units": 3}],
    }


def compare_paths(spec: dict, type_name: str, seed: int, registry: Any) -> None:
    """Run one spec compiled and layer by layer; AssertionError naming every disagreement."""

    compiled = Network.from_spec(spec, seed=seed, registry=registry)
    plain = Network.from_spec(spec, seed=seed, registry=registry)
    plain.use_plan = False
    for layer in plain.layers:
        bounds_checked(layer)
    where = " with a conv2d before it" if spec["layers"][0].get("name") == "conv_before" else ""
    try:
        plan = compiled.plan
    except CnntoolError:
        raise
    except Exception as exc:  # the generator or numba refusing the layer's calls
        raise AssertionError(
            f"{type_name}: the network{where} could not be compiled: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if plan is None:
        execution = compiled.execution(registry)
        raise AssertionError(
            f"{type_name}: the layer declares kernel calls but the network{where} cannot be compiled: "
            f"{execution['reason']}"
        )
    rng = np.random.default_rng(seed + 1)
    problems: list[str] = []

    def compare(what: str, a: Any, b: Any) -> None:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            problems.append(f"{what}: compiled gave shape {list(a.shape)}, layer by layer {list(b.shape)}")
        elif not np.allclose(
            a, b, rtol=RTOL, atol=ATOL * max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
        ):
            problems.append(
                f"{what}: compiled and layer by layer differ by up to {max_difference(a, b):.3g} "
                f"(compiled {describe_worst(a, b)})"
            )

    def run(step: Any) -> tuple[Any, Any]:
        results = []
        for net in (compiled, plain):
            try:
                results.append(step(net))
            except AssertionError:
                raise
            except Exception as exc:
                path = "compiled" if net is compiled else "layer by layer"
                raise AssertionError(
                    f"{type_name}: {path}{where}, {type(exc).__name__}: {first_line(exc)}"
                ) from None
        return results[0], results[1]

    batch = 3
    x = rng.standard_normal((batch, *compiled.input_shape)).astype(np.float32)
    labels = rng.integers(0, compiled.output_shape[0], batch).astype(np.int64)
    for training in (False, True):
        a, b = run(lambda net, training=training: net.forward(x, training=training))
        compare(f"forward (training={training})", a, b)
    a, b = run(lambda net: net.predict_proba(x))  # inference may fuse further than forward
    compare("predict", a, b)
    grad = rng.standard_normal((batch, *compiled.output_shape)).astype(np.float32)
    a, b = run(lambda net: (net.forward(x, training=True), net.backward(grad))[1])
    compare("backward: dL/dx", a, b)
    for key in compiled.grads():
        compare(f"backward: gradient of {key}", compiled.grads()[key], plain.grads()[key])
    train_step(compiled, plain, x, labels, run, compare, "training step")
    x16 = rng.standard_normal((SPLIT_BATCH, *compiled.input_shape)).astype(np.float32)
    labels16 = rng.integers(0, compiled.output_shape[0], SPLIT_BATCH).astype(np.int64)
    with threads(2):
        cut = len(compiled.pieces(SPLIT_BATCH)) > 2
        what = "training step with the batch cut across threads" if cut else "training step, batch 16"
        train_step(compiled, plain, x16, labels16, run, compare, what)
    if problems:
        shown = problems[:3] + ([f"and {len(problems) - 3} more"] if len(problems) > 3 else [])
        raise AssertionError(f"{type_name}: network{where}: " + "; ".join(shown))


def train_step(
    compiled: Any, plain: Any, x: np.ndarray, labels: np.ndarray, run: Any, compare: Any, what: str
) -> None:
    """One training step and an SGD update both ways, comparing loss, gradients and weights."""

    a, b = run(lambda net: net.train_step(x, labels))
    compare(f"{what}: loss", a[0], b[0])
    for key in compiled.grads():
        compare(f"{what}: gradient of {key}", compiled.grads()[key], plain.grads()[key])
    run(lambda net: SGD(net, lr=0.1).step())
    for key in compiled.params():
        compare(f"{what}: {key} after an SGD update", compiled.params()[key], plain.params()[key])
    for key in compiled.state():
        compare(f"{what}: state {key}", compiled.state()[key], plain.state()[key])


class threads:
    """Run with `count` threads, restoring the setting after."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __enter__(self) -> None:

        self.previous = settings._configured
        settings.set_threads(self.count)

    def __exit__(self, *exc: Any) -> None:

        settings.set_threads(self.previous)


def describe_worst(a: np.ndarray, b: np.ndarray) -> str:
    where = int(np.argmax(np.abs(a - b))) if a.size else 0
    at = f" at {index_of(where, a.shape)}" if a.ndim else ""
    return f"{float(a.reshape(-1)[where]):.6g}, layer by layer {float(b.reshape(-1)[where]):.6g}{at}"


def index_of(flat: int, shape: tuple) -> list[int]:
    return [int(i) for i in np.unravel_index(flat, shape)]


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
