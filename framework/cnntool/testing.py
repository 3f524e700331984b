"""Checks any layer type should pass, for cnntool's own tests and for plugin authors.

    from cnntool.testing import check_gradients
    layer = make_layer({"type": "leaky_relu"}, input_shape=(3, 8, 8))
    check_gradients(layer, batch=2)

The gradient check compares `backward` with central finite differences of
f = sum(forward(x) * R) for a fixed random R, on sampled coordinates of the input and of
every parameter. Raises AssertionError with the worst mismatch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.layers.base import Layer, Shape


def make_layer(config: dict, input_shape: Shape, seed: int = 0, registry: Any = None) -> Layer:
    """Validate a layer config through the registry's spec model and build the layer."""
    from cnntool.registry import get_registry

    registry = registry or get_registry()
    model = registry.spec_model()
    spec = model.model_validate({"input_shape": [1, 1, 1], "layers": [config]})
    layer = registry.get(config["type"])(spec.layers[0])
    layer.build(tuple(input_shape), np.random.default_rng(seed))
    return layer


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
    """Compare analytic gradients with central differences; return the worst error per
    array ('x' and each parameter). `x` defaults to standard-normal inputs."""
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.standard_normal((batch, *layer.input_shape)).astype(np.float32)
    x = np.ascontiguousarray(x, np.float32)
    out = layer.forward(x, training=training).copy()
    projection = rng.standard_normal(out.shape).astype(np.float32)

    def objective() -> float:
        return float(np.sum(layer.forward(x, training=training).astype(np.float64) * projection))

    layer.forward(x, training=training)
    layer.need_input_grad = True
    analytic = {"x": layer.backward(projection.copy()).copy()}
    analytic.update({key: grad.copy() for key, grad in layer.grads.items()})
    targets = {"x": x, **layer.params}
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
            error = abs(numeric - exact)
            if error > atol + rtol * abs(numeric):
                raise AssertionError(
                    f"{layer.name}: gradient of {key}[{np.unravel_index(i, array.shape)}] is {exact:.6g}, "
                    f"finite differences give {numeric:.6g}"
                )
            errors.append(error)
        worst[key] = max(errors)
    return worst
