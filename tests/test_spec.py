"""Spec validation and shape inference: errors name the layer and say what was expected."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnntool
from cnntool.errors import InputError, SpecError
from cnntool.model.spec import validate_spec


def spec_with(*layers, **extra):
    return {"name": "t", "input_shape": [1, 12, 12], "layers": list(layers), **extra}


CONV = {"type": "conv2d", "filters": 4, "kernel_size": 3}


def test_seed_spec_validates_and_names_layers(seed_spec_path):
    spec = validate_spec(seed_spec_path)
    names = [layer.name for layer in spec.layers]
    assert names == [
        "conv2d_1",
        "relu_1",
        "maxpool2d_1",
        "conv2d_2",
        "relu_2",
        "maxpool2d_2",
        "flatten_1",
        "dense_1",
    ]
    net = cnntool.Network.from_spec(seed_spec_path)
    assert [layer.output_shape for layer in net.layers] == [
        (8, 26, 26),
        (8, 26, 26),
        (8, 13, 13),
        (16, 11, 11),
        (16, 11, 11),
        (16, 5, 5),
        (400,),
        (10,),
    ]
    assert net.num_params == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 400 * 10 + 10


def test_given_names_are_kept_and_must_be_unique():
    spec = validate_spec(
        spec_with({**CONV, "name": "stem"}, {"type": "flatten"}, {"type": "dense", "units": 2})
    )
    assert spec.layers[0].name == "stem"
    with pytest.raises(SpecError, match=r"layer 1 \(conv2d\): name 'a' is already the name of layer 0"):
        validate_spec(spec_with({**CONV, "name": "a"}, {**CONV, "name": "a"}, {"type": "flatten"}))


@pytest.mark.parametrize(
    "layers,message",
    [
        (
            [{"type": "conv3d"}],
            r"layer 0 \(conv3d\).*does not match any of the expected tags.*cnntool layers",
        ),
        (
            [{**CONV, "kernel_size": 0}],
            r"layer 0 \(conv2d\) kernel_size: .*greater than or equal to 1, received 0",
        ),
        (
            [{**CONV, "filters": "many"}],
            r"layer 0 \(conv2d\) filters: Input should be a valid integer.*received 'many'",
        ),
        ([{**CONV, "padding": "full"}], r"layer 0 \(conv2d\) padding"),
        ([{**CONV, "colour": "red"}], r"layer 0 \(conv2d\) colour: Extra inputs are not permitted"),
        ([{"type": "dense"}], r"layer 0 \(dense\) units: Field required"),
        ([{"filters": 2}], r"layer 0: Unable to extract tag using discriminator 'type'"),
    ],
)
def test_invalid_fields_name_the_layer(layers, message):
    with pytest.raises(SpecError, match=message):
        validate_spec(spec_with(*layers))


def test_kernel_larger_than_input_names_layer_and_shapes():
    layers = [CONV, {"type": "maxpool2d", "pool_size": 4}, {**CONV, "kernel_size": 5, "name": "late"}]
    with pytest.raises(SpecError) as info:
        validate_spec(spec_with(*layers))
    assert str(info.value) == (
        "layer 2 'late' (conv2d): kernel_size 5x5 is larger than its input 2x2 (input shape (4, 2, 2)); "
        "use a smaller kernel or padding"
    )


def test_dense_after_conv_without_flatten_says_what_to_add():
    with pytest.raises(
        SpecError,
        match=r"layer 1 'dense_1' \(dense\): expected a flat input \(features,\), "
        r"received shape \(4, 10, 10\); add \{\"type\": \"flatten\"\} before it",
    ):
        validate_spec(spec_with(CONV, {"type": "dense", "units": 10}))


def test_classes_must_match_outputs():
    with pytest.raises(SpecError, match="outputs 3 values but the spec names 2 classes"):
        validate_spec(spec_with({"type": "flatten"}, {"type": "dense", "units": 3}, classes=["a", "b"]))


def test_network_must_end_flat():
    with pytest.raises(SpecError, match=r"outputs shape \(4, 10, 10\); a classifier ends with flat logits"):
        validate_spec(spec_with(CONV))


def test_top_level_errors():
    with pytest.raises(SpecError, match="input_shape: Field required"):
        validate_spec({"layers": [{"type": "flatten"}]})
    with pytest.raises(SpecError, match="layers: List should have at least 1 item"):
        validate_spec({"input_shape": [1, 2, 2], "layers": []})
    with pytest.raises(SpecError, match=r"input_shape.*greater than or equal to 1, received 0"):
        validate_spec({"input_shape": [1, 0, 2], "layers": [{"type": "flatten"}]})
    with pytest.raises(SpecError, match="more than 67108864 elements"):
        validate_spec({"input_shape": [4096, 4096, 16], "layers": [{"type": "flatten"}]})
    with pytest.raises(SpecError, match="a spec must be a JSON object, received list"):
        validate_spec("[1]")


def test_spec_files(tmp_path):
    with pytest.raises(SpecError, match=r"missing\.json: spec file not found"):
        validate_spec(tmp_path / "missing.json")
    with pytest.raises(SpecError, match=r"'spec\\x00\.json': a path cannot contain a NUL byte"):
        validate_spec("spec\x00.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"input_shape": [1, 2, 2],\n "layers": [}')
    with pytest.raises(SpecError, match=r"bad\.json: invalid JSON at line 2 column 13"):
        validate_spec(bad)
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(SpecError, match="nested too deeply"):
        validate_spec(deep)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(spec_with({"type": "flatten"}, {"type": "dense", "units": 2})))
    assert validate_spec(good).name == "t"
    assert validate_spec(good.read_text()).name == "t"


def test_schema_lists_every_builtin_type():
    schema = cnntool.get_registry().spec_model().model_json_schema()
    tags = set(schema["properties"]["layers"]["items"]["discriminator"]["mapping"])
    assert {"conv2d", "dense", "maxpool2d", "relu", "flatten", "softmax"} <= tags


def test_forward_returns_fresh_arrays_and_checks_input(rng, seed_spec_path):
    net = cnntool.Network.from_spec(seed_spec_path, seed=0)
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    a = net.forward(x)
    b = net.forward(x[:1])
    assert a.shape == (3, 10) and b.shape == (1, 10)
    np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        InputError, match=r"expected a batch of shape \(N, 1, 28, 28\), received \(1, 28, 28\)"
    ):
        net.forward(x[0])
    assert net.forward(x.astype(np.float64)).dtype == np.float32


def test_same_seed_same_weights_different_seed_different(seed_spec_path):
    a = cnntool.Network.from_spec(seed_spec_path, seed=7).params()
    b = cnntool.Network.from_spec(seed_spec_path, seed=7).params()
    c = cnntool.Network.from_spec(seed_spec_path, seed=8).params()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv2d_1.weight"], c["conv2d_1.weight"])


def test_he_initialisation_scale():
    spec = spec_with({"type": "flatten"}, {"type": "dense", "units": 500})
    weight = cnntool.Network.from_spec({**spec, "input_shape": [1, 40, 50]}, seed=0).params()[
        "dense_1.weight"
    ]
    assert weight.std() == pytest.approx(np.sqrt(2 / 2000), rel=0.02)
    assert abs(weight.mean()) < 1e-3


def test_params_are_live(rng):
    net = cnntool.Network.from_spec(spec_with({"type": "flatten"}, {"type": "dense", "units": 2}))
    x = rng.random((1, 1, 12, 12)).astype(np.float32)
    net.layers[1].params["weight"][:] = 0
    net.layers[1].params["bias"][:] = [1, 2]
    np.testing.assert_array_equal(net.forward(x), [[1, 2]])


def test_trailing_softmax_is_the_classifier_head(rng):
    spec = spec_with({"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"})
    net = cnntool.Network.from_spec(spec, seed=0)
    x = rng.random((2, 1, 12, 12)).astype(np.float32)
    probs = net.forward(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(net.predict_proba(x), probs, rtol=1e-6)
    assert net.head == 2


JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["conv2d", "dense", "relu", "same", "valid", "flatten", "softmax"]),
)  # fmt: skip
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(draw=st.data())
def test_mutated_specs_give_only_spec_errors(draw, seed_spec_path):
    """Hundreds of damaged specs: a value anywhere replaced by arbitrary JSON, a key dropped or
    added. Validation either accepts the spec or raises SpecError, never anything else; an
    accepted spec that is small enough also builds."""
    spec = json.loads(seed_spec_path.read_text())
    path = []
    target = spec
    while isinstance(target, (dict, list)) and target and draw.draw(st.booleans()):
        key = draw.draw(st.sampled_from(sorted(target) if isinstance(target, dict) else range(len(target))))
        path.append(key)
        target = target[key]
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    action = draw.draw(st.sampled_from(["replace", "drop", "add"]))
    if not path:
        spec = draw.draw(JSON_VALUE) if action == "replace" else spec
    elif action == "replace":
        parent[path[-1]] = draw.draw(JSON_VALUE)
    elif action == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw.draw(st.text(max_size=8))] = draw.draw(JSON_VALUE)
    try:
        validated = validate_spec(json.dumps(spec, allow_nan=True) if draw.draw(st.booleans()) else spec)
    except SpecError:
        return
    from cnntool.inference.inspect import spec_summary

    if spec_summary(validated)["total_params"] < 200_000:
        cnntool.Network.from_spec(validated, seed=0)
