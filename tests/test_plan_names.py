"""Layer names never reach the generated code: adversarial names compute the same compiled
as layer by layer (issue: `conv-a` and `conv_a` once shared one identifier, so the compiled
forward used one layer's weights for the other)."""

import keyword

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnntool

# Look-alikes, Python keywords and builtins, and the generator's own identifiers (the
# arguments of plan functions, its numbered arrays and kernels, names it used before).
LOOK_ALIKES = ["conv-a", "conv_a", "conv_a_", "conv__a", "a-b-c", "a_b-c", "a_b_c", "_", "__", "_-"]
PYTHON = ["def", "class", "return", "None", "True", "lambda", "import", "len", "range", "print", "np"]
GENERATOR = [
    "x", "n", "probs", "labels", "grad", "grad_logits", "grad_scale", "loss", "correct", "training",
    "params", "grads", "state", "ws", "iws", "sws", "siws", "random", "offset", "njit",
    "P0", "P1", "G0", "S0", "B0", "B1", "T0", "k0", "k1", "V4", "GV4", "L0_out", "P_conv_a__weight",
]  # fmt: skip
NAMES = LOOK_ALIKES + PYTHON + GENERATOR + sorted(set(keyword.kwlist) - set(PYTHON))

STRUCTURES = {
    "conv": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "conv2d", "filters": 3, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 2, "kernel_size": 2, "stride": 2, "use_bias": False},
        {"type": "flatten"},
        {"type": "dense", "units": 5},
        {"type": "relu"},
        {"type": "dense", "units": 4},
    ],
    "norm": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "use_bias": False},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "avgpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 6},
        {"type": "tanh"},
        {"type": "dense", "units": 4},
        {"type": "softmax"},
    ],
}


def network(structure: str, names: list[str], fuse: bool) -> cnntool.Network:
    layers = [dict(layer) for layer in STRUCTURES[structure]]
    for layer, name in zip(layers, names, strict=False):  # the first len(names) layers
        layer["name"] = name
    spec = {"name": "names", "input_shape": [1, 9, 9], "layers": layers}
    net = cnntool.Network.from_spec(spec, seed=0)
    net.use_plan = fuse
    return net


def test_the_reported_look_alikes():
    spec = {"name": "names", "input_shape": [1, 9, 9], "classes": list("abcd"), "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "name": "conv-a"}, {"type": "relu"},
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "name": "conv_a"}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 4}]}  # fmt: skip
    net = cnntool.Network.from_spec(spec, seed=0)
    x = np.random.default_rng(0).random((5, 1, 9, 9), dtype=np.float32)
    h = x
    for layer in net.layers:
        h = layer.forward(h)
    assert net.plan is not None
    np.testing.assert_allclose(net.forward(x), h, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    structure=st.sampled_from(sorted(STRUCTURES)),
    # Half the draws from the look-alikes, so that two of them often meet in one network.
    names=st.lists(st.sampled_from(LOOK_ALIKES) | st.sampled_from(NAMES), unique=True, max_size=10),
)
def test_adversarial_names_compute_the_same_compiled_as_layer_by_layer(structure, names):
    fused, plain = network(structure, names, True), network(structure, names, False)
    assert fused.plan is not None and plain.plan is None
    rng = np.random.default_rng(len(names))
    x = rng.random((6, 1, 9, 9), dtype=np.float32)
    for training in (False, True):
        np.testing.assert_allclose(
            fused.forward(x, training=training), plain.forward(x, training=training), rtol=1e-5, atol=1e-6
        )
    grad = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(fused.backward(grad), plain.backward(grad), rtol=1e-4, atol=1e-6)
    for key, value in plain.grads().items():
        np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_names_do_not_change_the_generated_module(structure):
    """One compiled module serves every naming of a structure (names are not in its text)."""
    a = network(structure, [], True).plan.source
    b = network(structure, NAMES, True).plan.source
    assert a == b
