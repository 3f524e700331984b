"""Finite-difference checks of every built-in layer's backward, the loss and a network."""

import numpy as np
import pytest

import cnntool
import reference
from cnntool.testing import check_gradients, make_layer

CASES = [
    ({"type": "conv2d", "filters": 3, "kernel_size": 3}, (2, 6, 6)),
    ({"type": "conv2d", "filters": 2, "kernel_size": (3, 2), "stride": 2, "padding": 1}, (3, 7, 6)),
    ({"type": "conv2d", "filters": 2, "kernel_size": 4, "padding": "same", "use_bias": False}, (2, 5, 5)),
    ({"type": "dense", "units": 4}, (6,)),
    ({"type": "softmax"}, (5,)),
]


@pytest.mark.parametrize("config,input_shape", CASES, ids=lambda v: str(v))
def test_layer_gradients(config, input_shape):
    layer = make_layer(config, input_shape, seed=3)
    for key in layer.params:
        if key == "bias":
            layer.params[key][:] = 0.1
    eps = 1e-3 if config["type"] == "softmax" else 1e-2
    worst = check_gradients(layer, batch=2, eps=eps)
    assert set(worst) == {"x", *layer.params}


def test_piecewise_layers_gradients_away_from_kinks(rng):
    # Inputs spaced at least 0.1 apart and from 0, so a ±0.01 step never crosses a kink.
    values = rng.permutation(np.arange(1, 2 * 3 * 6 * 6 + 1)).astype(np.float32) * 0.1
    x = (values - values.mean()).reshape(2, 3, 6, 6)
    x[np.abs(x) < 0.05] += 0.3
    for config in (
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "maxpool2d", "pool_size": 3, "stride": 1},
    ):
        layer = make_layer(config, (3, 6, 6))
        check_gradients(layer, x=x.copy(), eps=1e-2)


def test_check_gradients_detects_a_wrong_backward():
    layer = make_layer({"type": "dense", "units": 3}, (4,))
    original = layer.backward

    def broken(grad_out):
        result = original(grad_out)
        layer.grads["weight"] *= 1.5
        return result

    layer.backward = broken
    with pytest.raises(AssertionError, match="gradient of weight"):
        check_gradients(layer)


def test_softmax_cross_entropy_matches_reference(rng):
    logits = (rng.standard_normal((5, 7)) * 3).astype(np.float32)
    labels = rng.integers(0, 7, 5)
    loss, grad = cnntool.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = reference.cross_entropy(logits, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_softmax_cross_entropy_gradient_by_finite_differences(rng):
    logits = rng.standard_normal((3, 4)).astype(np.float64)
    labels = np.array([0, 3, 1])
    _, grad = cnntool.softmax_cross_entropy(logits, labels)
    eps = 1e-3
    for i in range(3):
        for k in range(4):
            plus, minus = logits.copy(), logits.copy()
            plus[i, k] += eps
            minus[i, k] -= eps
            numeric = (
                reference.cross_entropy(plus, labels)[0] - reference.cross_entropy(minus, labels)[0]
            ) / (2 * eps)
            assert grad[i, k] == pytest.approx(numeric, abs=1e-5)


def test_softmax_cross_entropy_is_stable_for_extreme_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], np.float32)
    loss, grad = cnntool.softmax_cross_entropy(logits, np.array([2, 1]))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(1e4, rel=1e-6)


def test_softmax_cross_entropy_rejects_bad_labels():
    with pytest.raises(cnntool.InputError, match=r"labels must lie in \[0, 3\)"):
        cnntool.softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 3]))


def test_network_backward_matches_finite_differences(rng):
    spec = {
        "input_shape": [2, 8, 8],
        "layers": [
            {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": 1},
            {"type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
    }
    net = cnntool.Network.from_spec(spec, seed=5)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    labels = np.array([0, 2])

    def loss_at():
        return cnntool.softmax_cross_entropy(net.forward(x), labels)[0]

    _, grad = cnntool.softmax_cross_entropy(net.forward(x), labels)
    grad_x = net.backward(grad)
    grads = {k: v.copy() for k, v in net.grads().items()}
    eps = 1e-2
    for key, param in net.params().items():
        flat = param.reshape(-1)
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            original = flat[i]
            flat[i] = original + eps
            plus = loss_at()
            flat[i] = original - eps
            minus = loss_at()
            flat[i] = original
            assert grads[key].reshape(-1)[i] == pytest.approx(
                (plus - minus) / (2 * eps), abs=2e-3, rel=3e-2
            ), key
    flat_x = x.reshape(-1)
    for i in rng.choice(flat_x.size, size=6, replace=False):
        original = flat_x[i]
        flat_x[i] = original + eps
        plus = loss_at()
        flat_x[i] = original - eps
        minus = loss_at()
        flat_x[i] = original
        assert grad_x.reshape(-1)[i] == pytest.approx((plus - minus) / (2 * eps), abs=2e-3, rel=3e-2)
