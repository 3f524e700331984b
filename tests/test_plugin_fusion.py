"""A plugin activation written in the declared style, as docs/plugins.md shows: it compiles
into the plan, its float32 scalars stay float32, a stride-1 convolution before it applies
its Epilogue in the plan like a ReLU, and the plan agrees with layer-by-layer execution.
Also: which path a network runs is said, naming the layer that forces layer by layer.

The layer type is given to a registry of cnntool's own types, as if a distribution
`cnntool-softsign` provided it (installed plugins are in test_plugins.py)."""

from typing import Literal

import numpy as np
import pytest
from numba import njit, types

import cnntool
from cnntool.layers import GRAD_OUT, Array, Call, Epilogue, Layer, LayerConfig, X, buf
from cnntool.model.registry import LayerType, Registry
from cnntool.testing import CHECKS, check_layer
from cnntool.testing.kit import compare_paths


@njit(cache=True, fastmath=True, nogil=True)
def softsign_value(x, scale, unused):
    """y = scale * x / (1 + |x|)."""
    return scale * x / (np.float32(1.0) + abs(x))


@njit(cache=True, fastmath=True, nogil=True)
def softsign_derivative(x, scale, unused):
    """dy/dx = scale / (1 + |x|)^2."""
    d = np.float32(1.0) + abs(x)
    return scale / (d * d)


@njit(cache=True, fastmath=True, nogil=True)
def softsign_forward(x, scale, out):
    """out = scale * x / (1 + |x|)."""
    src = x.reshape(x.size)
    dst = out.reshape(out.size)
    for i in range(src.size):
        dst[i] = softsign_value(src[i], scale, scale)


@njit(cache=True, fastmath=True, nogil=True)
def softsign_backward(grad_out, x, scale, grad_x):
    """dx = grad_out * scale / (1 + |x|)^2."""
    g = grad_out.reshape(grad_out.size)
    src = x.reshape(x.size)
    dst = grad_x.reshape(grad_x.size)
    for i in range(g.size):
        dst[i] = g[i] * softsign_derivative(src[i], scale, scale)


class SoftsignConfig(LayerConfig):
    type: Literal["softsign"] = "softsign"
    scale: float = 1.5


class Softsign(Layer):
    """y = scale * x / (1 + |x|); dy/dx = scale / (1 + |x|)^2."""

    Config = SoftsignConfig

    @property
    def epilogue(self) -> Epilogue:
        return Epilogue(
            softsign_value, softsign_derivative, a=self.config.scale, increasing=self.config.scale >= 0
        )

    def buffers(self):
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}

    def forward_calls(self, training):
        return [Call(softsign_forward, x=X, scale=np.float32(self.config.scale), out=buf("out"))]

    def backward_calls(self, need_grad_x):
        if not need_grad_x:
            return []
        return [Call(softsign_backward, grad_out=GRAD_OUT, x=X, scale=np.float32(self.config.scale),
                     grad_x=buf("grad_x"))]  # fmt: skip


class ByHandConfig(LayerConfig):
    type: Literal["by_hand"] = "by_hand"


class ByHand(Layer):
    """y = x, written by hand."""

    Config = ByHandConfig

    def forward(self, x, *, training=False):
        return x

    def backward(self, grad_out):
        return grad_out


@pytest.fixture(scope="module")
def registry():
    registry = Registry.discover(load_plugins=False)
    registry.load_plugins = True
    for name, cls in (("softsign", Softsign), ("by_hand", ByHand)):
        registry.add(LayerType(name, f"{__name__}:{cls.__name__}", "cnntool-softsign", "0.2.0", None, cls))
    return registry


def spec(*activation):
    conv = {"type": "conv2d", "name": "conv", "filters": 4, "kernel_size": 3, "padding": "same"}
    return {
        "name": "fused",
        "input_shape": [2, 7, 7],
        "layers": [conv, *activation, {"type": "flatten"}, {"type": "dense", "units": 3}],
    }


def test_the_convolution_applies_the_plugin_epilogue_and_agrees_with_layer_by_layer(registry):
    net = cnntool.Network.from_spec(spec({"type": "softsign", "scale": 0.75}), registry=registry)
    assert net.execution(registry)["compiled"]
    source = net.plan.source
    assert "# layer 1 (softsign) (applied by the layer before)" in source
    assert "conv2d_forward_wide_epilogue as" in source and "softsign_forward" not in source
    # forward (both modes), backward, a training step and an SGD update, and with threads:
    compare_paths(spec({"type": "softsign", "scale": 0.75}), "softsign", 0, registry)
    # An increasing activation and a max-pool after it: inference is one pass, as for ReLU.
    pooled = spec({"type": "softsign", "scale": 0.75}, {"type": "maxpool2d", "pool_size": 2})
    source = cnntool.Network.from_spec(pooled, registry=registry).plan.source
    predict = source[source.index("def predict(") : source.index("def predict_parts(")]
    assert "(computed by an earlier layer's kernel)" in predict and "conv2d_epilogue_pool_wide as" in source
    compare_paths(pooled, "softsign", 0, registry)
    # Against the formula too: the plan's logits equal dense(flatten(softsign(conv(x)))).
    x = np.random.default_rng(3).standard_normal((2, 2, 7, 7)).astype(np.float32)
    pre = cnntool.Network.from_spec(spec(), registry=registry).run_forward(x, stop=1)
    activated = (0.75 * pre / (1 + np.abs(pre))).reshape(2, -1)
    dense = net.layers[-1]
    expected = activated @ dense.params["weight"].T + dense.params["bias"]
    np.testing.assert_allclose(net.forward(x), expected, rtol=1e-4, atol=1e-5)


def test_float32_scalars_reach_kernels_as_float32_both_ways(registry):
    layers = [{"type": "flatten"}, {"type": "softsign"}, {"type": "dense", "units": 2}]
    net = cnntool.Network.from_spec({"input_shape": [1, 3, 3], "layers": layers}, registry=registry)
    assert "np.float32(reals[" in net.plan.source
    x = np.ones((2, 1, 3, 3), np.float32)
    net.forward(x, training=True)
    net.backward(np.ones((2, 2), np.float32))
    plain = cnntool.Network.from_spec({"input_shape": [1, 3, 3], "layers": layers}, registry=registry)
    plain.use_plan = False
    plain.forward(x, training=True)
    plain.backward(np.ones((2, 2), np.float32))
    # One compiled kernel serves the plan and layer-by-layer execution: scale is float32.
    assert {signature[1] for signature in softsign_forward.signatures} == {types.float32}
    assert {signature[2] for signature in softsign_backward.signatures} == {types.float32}


def test_the_kit_runs_the_plugin_both_ways_and_it_passes(registry):
    # Without `bundle`: bundles record providers from the installed distributions, and this
    # one is not installed (test_plugins.py checks bundles of installed plugins).
    checks = tuple(check for check in CHECKS if check != "bundle")
    results = check_layer({"type": "softsign", "scale": 2.0}, (3, 5, 5), registry=registry, checks=checks)
    assert [(r.check, r.ok, r.message) for r in results] == [(check, True, "") for check in checks]
    assert {r.provider for r in results} == {"cnntool-softsign==0.2.0"}


def test_a_network_says_which_layer_keeps_it_from_compiling(registry):
    net = cnntool.Network.from_spec(spec({"type": "by_hand"}), registry=registry)
    assert net.plan is None
    execution = net.execution(registry)
    assert execution["layer"] == {
        "index": 1,
        "name": "by_hand_1",
        "type": "by_hand",
        "provider": "cnntool-softsign==0.2.0",
    }
    assert (
        execution["reason"] == "ByHand writes forward/backward by hand (forward_calls(training=True) is None)"
    )
    from cnntool.model.execution import execution_line

    assert execution_line(execution).startswith(
        "runs layer by layer because of layer 1 (by_hand_1, type 'by_hand' from cnntool-softsign==0.2.0): "
        "ByHand writes forward/backward by hand"
    )
