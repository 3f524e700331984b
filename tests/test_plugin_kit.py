"""The plugin author's kit (cnntool.testing) on the built-in layers, and the registry's rules
for clashing and failing entries. Real installed plugins are in test_plugins.py."""

import warnings
from typing import Literal

import numpy as np
import pytest

import cnntool
from cnntool.errors import PluginError, SpecError
from cnntool.layers import Layer, LayerConfig
from cnntool.model.registry import LayerType, PluginWarning, Registry
from cnntool.testing import (
    CHECKS,
    check_config_round_trip,
    check_gradients,
    check_layer,
    check_shapes,
    layer_examples,
    make_layer,
)

BUILTIN_EXAMPLES = [
    ({"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same"}, (2, 5, 5)),
    ({"type": "dense", "units": 3}, (6,)),
    ({"type": "maxpool2d", "pool_size": 2}, (2, 6, 6)),
    ({"type": "relu"}, (3, 4, 4)),
    ({"type": "flatten"}, (2, 3, 3)),
    ({"type": "softmax"}, (5,)),
]


@pytest.mark.parametrize("config,input_shape", BUILTIN_EXAMPLES, ids=lambda v: str(v))
def test_builtin_layers_pass_every_check(config, input_shape):
    results = check_layer(config, input_shape)
    assert [(r.check, r.ok, r.message) for r in results] == [(check, True, "") for check in CHECKS]


def test_gradient_check_tolerates_kinks_but_not_wrong_gradients(rng):
    layer = make_layer({"type": "relu"}, (4, 5, 5))
    # A third of the inputs lie within eps of relu's kink at 0: central differences are wrong
    # there, one-sided ones are right.
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    x.reshape(-1)[::3] = rng.uniform(-0.005, 0.005, x.size // 3 + 1).astype(np.float32)
    worst = check_gradients(layer, x=x.copy(), samples=60, eps=1e-2)
    assert worst["x"] < 1e-3
    original = layer.backward
    layer.backward = lambda grad_out: original(grad_out) * np.float32(1.1)
    with pytest.raises(AssertionError, match=r"relu: gradient of x\[\d, \d, \d, \d\] is "):
        check_gradients(layer, x=x.copy(), samples=60, eps=1e-2)


def test_gradient_check_refuses_a_step_that_only_sees_kinks():
    layer = make_layer({"type": "relu"}, (50,))
    x = np.linspace(-0.004, 0.004, 100, dtype=np.float32).reshape(2, 50)
    with pytest.raises(
        AssertionError, match=r"relu: 24 of 24 samples of x lie at kinks of the output; use a"
    ):
        check_gradients(layer, x=x, eps=1e-2)


def test_shape_check_compares_declarations_with_results():
    layer = make_layer({"type": "conv2d", "filters": 2, "kernel_size": 3}, (1, 5, 5))
    check_shapes(layer)
    layer.output_shape = (2, 4, 4)
    with pytest.raises(
        AssertionError, match=r"build returned output shape \(2, 4, 4\), compute_output_shape \(2, 3, 3\)"
    ):
        check_shapes(layer)


def test_config_round_trip_fills_defaults():
    dumped = check_config_round_trip({"type": "conv2d", "filters": 4, "kernel_size": [3, 2]})
    assert dumped == {
        "type": "conv2d",
        "filters": 4,
        "kernel_size": [3, 2],
        "stride": 1,
        "padding": 0,
        "use_bias": True,
        "init": "he_normal",
    }
    with pytest.raises(SpecError, match=r"invalid layer config: layer 0 \(conv2d\) filters: Field required"):
        check_config_round_trip({"type": "conv2d", "kernel_size": 3})


def test_examples_default_to_the_plain_config_on_a_shape_it_takes():
    registry = cnntool.get_registry()
    assert layer_examples(registry.get("relu"), "relu") == [({"type": "relu"}, (3, 8, 8))]
    assert layer_examples(registry.get("softmax"), "softmax") == [({"type": "softmax"}, (16,))]
    assert layer_examples(registry.get("dense"), "dense") == registry.get("dense").examples()

    class NeedsUnitsConfig(LayerConfig):
        type: Literal["needs_units"] = "needs_units"
        units: int

    class NeedsUnits(Layer):
        Config = NeedsUnitsConfig

    with pytest.raises(PluginError, match=r"NeedsUnits declares no examples\(\) and its default config"):
        layer_examples(NeedsUnits, "needs_units")


def entry(name, distribution, value="package.module:Layer"):
    return LayerType(name, value, distribution, "1.0", None)


def builtins_only():
    """A registry of cnntool's own types that accepts the plugin entries a test adds."""
    registry = Registry.discover(load_plugins=False)
    registry.load_plugins = True
    return registry


def test_plugins_never_replace_builtins_and_clashes_name_both():
    registry = builtins_only()
    relu = registry.types["relu"]
    with pytest.warns(PluginWarning) as caught:
        registry.add(entry("relu", "sneaky"))
        registry.add(entry("swish", "first"))
        registry.add(entry("swish", "second"))
        registry.add(entry("swish", "third"))
        registry.add(entry("swish", "second"))
    assert registry.types["relu"] is relu
    assert [e.distribution for e in registry.rejected] == ["sneaky"]
    assert [e.distribution for e in registry.conflicts["swish"]] == ["first", "second", "third"]
    assert "swish" not in registry.types
    assert [str(w.message) for w in caught] == [
        "layer type 'relu' is claimed by sneaky==1.0 (package.module:Layer) and by cnntool's built-in "
        "cnntool.layers.relu:ReLU; the built-in is kept. Rename the plugin's type.",
        "layer type 'swish' is claimed by two distributions: first==1.0 (package.module:Layer) and "
        "second==1.0 (package.module:Layer); uninstall one of them",
    ]
    with pytest.raises(PluginError, match=r"layer type 'swish' is claimed by two distributions: first==1.0"):
        registry.get("swish")
    assert [e.name for e in registry.distribution_entries("Sneaky")] == ["relu"]
    assert [e.name for e in registry.distribution_entries("second")] == ["swish"]


def test_a_type_that_fails_to_load_is_reported_once_and_refused_by_name():
    registry = builtins_only()
    registry.add(entry("boom", "fragile"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.spec_model()
        registry.load_all()
        with pytest.raises(PluginError):
            registry.get("boom")
    message = (
        "failed to load layer type 'boom' from distribution fragile==1.0: "
        "RuntimeError: no entry point for package.module:Layer"
    )
    assert [str(w.message) for w in caught] == [message]
    spec = {"input_shape": [1, 4, 4], "layers": [{"type": "boom"}, {"type": "flatten"}]}
    with pytest.raises(SpecError) as refused:
        cnntool.validate_spec(spec, registry)
    assert str(refused.value) == f"invalid spec: layer 0 (boom): {message}, received {{'type': 'boom'}}"
    schema = registry.spec_model().model_json_schema()
    assert "boom" not in schema["properties"]["layers"]["items"]["discriminator"]["mapping"]
