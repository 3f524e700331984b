"""A layer's math against itself: `check_gradients` compares `backward` with central finite
differences, `check_shapes` what `compute_output_shape` and `param_shapes` declare with what
`forward`, `backward` and `build` really produce.
"""

from __future__ import annotations

import numpy as np

from cnntool.layers.base import Layer
from cnntool.testing.fixtures import input_names, inputs_of, per_input
from cnntool.testing.kit import UnwrittenOutputError, check_written


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
    if not problems and (unwritten := check_written(layer, xs)):
        raise UnwrittenOutputError(f"{layer.name}: " + "; ".join(unwritten))
    if problems:
        raise AssertionError(f"{layer.name}: " + "; ".join(problems))
