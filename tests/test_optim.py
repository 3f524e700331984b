"""Optimizer updates against their PyTorch definitions written out in numpy."""

import numpy as np
import pytest

import cnntool
from cnntool.errors import CnntoolError

SPEC = {"input_shape": [1, 3, 3], "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}


def run_steps(optimizer_factory, steps, rng):
    net = cnntool.Network.from_spec(SPEC, seed=0)
    opt = optimizer_factory(net)
    start = {k: v.astype(np.float64) for k, v in net.params().items()}
    grads = [{k: rng.standard_normal(v.shape) for k, v in start.items()} for _ in range(steps)]
    for step in grads:
        for key, grad in net.grads().items():
            grad[:] = step[key]
        opt.step()
    return start, grads, net.params()


@pytest.mark.parametrize(
    "momentum,dampening,weight_decay,nesterov",
    [
        (0.0, 0.0, 0.0, False),
        (0.9, 0.0, 0.0, False),
        (0.9, 0.1, 0.01, False),
        (0.8, 0.0, 0.05, True),
    ],
)
def test_sgd_matches_definition(rng, momentum, dampening, weight_decay, nesterov):
    lr = 0.1
    start, grads, final = run_steps(
        lambda net: cnntool.optim.SGD(
            net, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        ),
        4,
        rng,
    )
    for key, p in start.items():
        p = p.copy()
        buf = None
        for step in grads:
            g = step[key] + weight_decay * p
            if momentum:
                buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
                g = g + momentum * buf if nesterov else buf
            p = p - lr * g
        np.testing.assert_allclose(final[key], p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,weight_decay", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.1)])
def test_adam_matches_definition(rng, kind, weight_decay):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    cls = cnntool.optim.Adam if kind == "adam" else cnntool.optim.AdamW
    start, grads, final = run_steps(lambda net: cls(net, lr=lr, weight_decay=weight_decay), 5, rng)
    for key, p in start.items():
        p = p.copy()
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, step in enumerate(grads, 1):
            g = step[key]
            if kind == "adamw":
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
        np.testing.assert_allclose(final[key], p, rtol=1e-5, atol=1e-6)


def test_defaults_follow_pytorch():
    net = cnntool.Network.from_spec(SPEC)
    assert cnntool.optim.AdamW(net).weight_decay == 0.01
    assert cnntool.optim.Adam(net).weight_decay == 0.0
    assert cnntool.optim.Adam(net).lr == 0.001


def test_invalid_hyperparameters_are_user_errors():
    net = cnntool.Network.from_spec(SPEC)
    with pytest.raises(CnntoolError, match="Invalid value for `lr`"):
        cnntool.optim.SGD(net, lr=0)
    with pytest.raises(CnntoolError, match="Nesterov"):
        cnntool.optim.SGD(net, lr=0.1, nesterov=True)


def test_state_dict_round_trip_continues_identically(rng):
    net_a = cnntool.Network.from_spec(SPEC, seed=1)
    net_b = cnntool.Network.from_spec(SPEC, seed=1)
    opt_a = cnntool.optim.Adam(net_a, lr=0.05)
    opt_b = cnntool.optim.Adam(net_b, lr=0.05)
    steps = [{k: rng.standard_normal(v.shape) for k, v in net_a.params().items()} for _ in range(4)]
    for i, step in enumerate(steps):
        for net, opt in ((net_a, opt_a), (net_b, opt_b)):
            for key, grad in net.grads().items():
                grad[:] = step[key]
            opt.step()
        if i == 1:
            opt_b2 = cnntool.optim.Adam(net_b, lr=0.05)
            opt_b2.load_state_dict(opt_b.state_dict())
            opt_b = opt_b2
    for key in net_a.params():
        np.testing.assert_array_equal(net_a.params()[key], net_b.params()[key])
