"""Optimizer updates against their PyTorch definitions written out in numpy."""

import numpy as np
import pytest

import cnntool
from cnntool.errors import CnntoolError

SPEC = {"input_shape": [1, 3, 3], "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}
# 81,940 parameters: past AXPY_MIN_SIZE, so plain SGD's update goes through BLAS saxpy.
LARGE_SPEC = {"input_shape": [1, 64, 64], "layers": [{"type": "flatten"}, {"type": "dense", "units": 20}]}


def run_steps(optimizer_factory, steps, rng, spec=SPEC):
    net = cnntool.Network.from_spec(spec, seed=0)
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


def test_plain_sgd_on_many_parameters_matches_definition(rng):
    from cnntool.kernels.optim import AXPY_MIN_SIZE

    lr = 0.05
    start, grads, final = run_steps(lambda net: cnntool.optim.SGD(net, lr=lr), 3, rng, LARGE_SPEC)
    assert sum(p.size for p in start.values()) >= AXPY_MIN_SIZE
    for key, p in start.items():
        expected = p.astype(np.float32)
        for step in grads:
            expected = expected - np.float32(lr) * step[key].astype(np.float32)
        np.testing.assert_allclose(final[key], expected, rtol=1e-6, atol=1e-7)


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


# --- PyTorch on the same weights, gradients and data ------------------------------------------

TORCH_CASES = {
    "sgd": ("SGD", {"lr": 0.05}),
    "sgd-momentum-decay": ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    "sgd-nesterov": ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.001}),
    "adam": ("Adam", {"lr": 0.01}),
    "adam-decay": ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    "adamw": ("AdamW", {"lr": 0.01}),
    "adamw-decay": ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_update_rules_match_pytorch_on_the_same_gradients(case, rng):
    torch = pytest.importorskip("torch")
    kind, hyper = TORCH_CASES[case]
    net = cnntool.Network.from_spec(SPEC, seed=2)
    ours = getattr(cnntool.optim, kind)(net, **hyper)
    tensors = {key: torch.tensor(value.copy(), requires_grad=True) for key, value in net.params().items()}
    theirs = getattr(torch.optim, kind)(list(tensors.values()), **hyper)
    for _ in range(25):
        for key, grad in net.grads().items():
            grad[:] = rng.standard_normal(grad.shape) * rng.uniform(0.01, 3.0)
            tensors[key].grad = torch.tensor(grad.copy())
        ours.step()
        theirs.step()
    for key, value in net.params().items():
        np.testing.assert_allclose(value, tensors[key].detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=key)


def test_defaults_are_pytorchs():
    torch = pytest.importorskip("torch")
    net = cnntool.Network.from_spec(SPEC)
    weight = [torch.zeros(1, requires_grad=True)]
    for kind in ("SGD", "Adam", "AdamW"):
        defaults = getattr(torch.optim, kind)(weight, lr=0.1).defaults
        ours = getattr(cnntool.optim, kind)(net, lr=0.1).hyperparameters()
        for key, value in ours.items():
            expected = list(defaults[key]) if key == "betas" else defaults[key]
            assert value == expected, (kind, key)


NETWORK = {
    "input_shape": [2, 10, 10],
    "layers": [
        # No bias before batch normalisation: its gradient is zero up to rounding, and Adam
        # would turn that noise into steps of size lr.
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "use_bias": False},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 12, "use_bias": False},
        {"type": "batchnorm1d"},
        {"type": "tanh"},
        {"type": "dense", "units": 3},
    ],
}


def torch_network(torch, net):
    """The same network in PyTorch, holding copies of `net`'s weights and running statistics."""
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 12, bias=False), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 3),
    )  # fmt: skip
    names = [layer.name for layer in net.layers]
    arrays = {**net.params(), **net.state()}
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            index, field = key.split(".")
            if field != "num_batches_tracked":
                tensor.copy_(torch.tensor(arrays[f"{names[int(index)]}.{field}"]))
    return model


@pytest.mark.parametrize("case", ["sgd-nesterov", "adam-decay", "adamw-decay"])
def test_training_steps_match_pytorch(case, rng):
    """Forward (batch statistics), cross-entropy, backward and update, five times."""
    torch = pytest.importorskip("torch")
    kind, hyper = TORCH_CASES[case]
    net = cnntool.Network.from_spec(NETWORK, seed=5)
    model = torch_network(torch, net)
    ours = getattr(cnntool.optim, kind)(net, **hyper)
    theirs = getattr(torch.optim, kind)(model.parameters(), **hyper)
    for _ in range(5):
        x = rng.standard_normal((16, 2, 10, 10)).astype(np.float32)
        labels = rng.integers(0, 3, 16)
        loss, _ = net.train_step(x, labels.astype(np.int64))
        ours.step()
        theirs.zero_grad()
        expected = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels))
        expected.backward()
        theirs.step()
        assert loss / 16 == pytest.approx(expected.item(), rel=1e-4)
    torch_state = model.state_dict()
    for index, layer in enumerate(net.layers):
        for field, value in {**layer.params, **layer.state}.items():
            np.testing.assert_allclose(
                value,
                torch_state[f"{index}.{field}"].numpy(),
                rtol=1e-4,
                atol=2e-5,
                err_msg=f"{layer.name}.{field}",
            )
    model.eval()
    x = rng.standard_normal((8, 2, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), model(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-4)
