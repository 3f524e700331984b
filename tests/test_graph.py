"""Graph networks: residual and concatenating specs against PyTorch on the same weights, the
compiled plan against layer by layer, and every bad graph as a one-line SpecError."""

import json
import os

import numpy as np
import pytest
from torch_graph import torch_graph, torch_weights

import cnntool
from cnntool.errors import SpecError
from cnntool.model.spec import validate_spec


def block(name, source, filters, stride=1):
    """A ResNet basic block; a strided or widening one projects its shortcut."""
    layers = [
        {"type": "conv2d", "name": f"{name}_c1", "inputs": [source], "filters": filters, "kernel_size": 3,
         "stride": stride, "padding": 1, "use_bias": False},
        {"type": "batchnorm2d", "name": f"{name}_bn1"},
        {"type": "relu", "name": f"{name}_r1"},
        {"type": "conv2d", "name": f"{name}_c2", "filters": filters, "kernel_size": 3, "padding": "same",
         "use_bias": False},
        {"type": "batchnorm2d", "name": f"{name}_bn2"},
    ]  # fmt: skip
    shortcut = source
    if stride != 1 or filters != 4:
        layers += [
            {"type": "conv2d", "name": f"{name}_proj", "inputs": [source], "filters": filters,
             "kernel_size": 1, "stride": stride, "use_bias": False},
            {"type": "batchnorm2d", "name": f"{name}_bnp"},
        ]  # fmt: skip
        shortcut = f"{name}_bnp"
    return [
        *layers,
        {"type": "add", "name": f"{name}_add", "inputs": [f"{name}_bn2", shortcut]},
        {"type": "relu", "name": f"{name}_out"},
    ]


RESIDUAL = {
    "name": "residual",
    "input_shape": [2, 10, 9],
    "layers": [
        {"type": "conv2d", "name": "stem", "filters": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu", "name": "stem_relu"},
        *block("b1", "stem_relu", 4),
        *block("b2", "b1_out", 6, stride=2),
        {"type": "global_avgpool2d"},
        {"type": "dense", "units": 3},
    ],
}

# Inception-like branches joined by concat, a shortcut over a whole stage and the network
# input read twice; no batch norm, so batches are cut across threads.
BRANCHES = {
    "name": "branches",
    "input_shape": [3, 9, 8],
    "layers": [
        {"type": "conv2d", "name": "a", "filters": 4, "kernel_size": 1},
        {"type": "relu", "name": "a_relu"},
        {
            "type": "conv2d",
            "name": "b",
            "inputs": ["input"],
            "filters": 3,
            "kernel_size": 3,
            "padding": "same",
        },
        {"type": "relu", "name": "b_relu"},
        {"type": "maxpool2d", "name": "c", "inputs": ["input"], "pool_size": 3, "stride": 1},
        {"type": "conv2d", "name": "c_proj", "filters": 2, "kernel_size": 1, "padding": 1},
        {"type": "concat", "name": "join", "inputs": ["a_relu", "b_relu", "c_proj"]},
        {"type": "conv2d", "name": "mix", "filters": 9, "kernel_size": 3, "padding": 1},
        {"type": "tanh", "name": "mix_tanh"},
        {"type": "add", "name": "skip", "inputs": ["mix_tanh", "join", "join_copy"]},
        {"type": "avgpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 4},
    ],
}
# concat reads 'join' once more through a copy made by a relu (each input is named once).
BRANCHES["layers"].insert(7, {"type": "relu", "name": "join_copy", "inputs": ["join"]})
BRANCHES["layers"][8]["inputs"] = ["join"]

SPECS = {"residual": RESIDUAL, "branches": BRANCHES}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_compiled_graph_matches_layer_by_layer(name, rng):
    fused = cnntool.Network.from_spec(SPECS[name], seed=2)
    plain = cnntool.Network.from_spec(SPECS[name], seed=2)
    plain.use_plan = False
    assert fused.plan is not None and plain.plan is None
    x = rng.standard_normal((12, *fused.input_shape)).astype(np.float32)
    labels = rng.integers(0, fused.output_shape[0], 12).astype(np.int64)
    for training in (False, True):
        np.testing.assert_allclose(
            fused.forward(x, training=training), plain.forward(x, training=training), rtol=1e-5, atol=1e-5
        )
    grad = rng.standard_normal((12, fused.output_shape[0])).astype(np.float32)
    np.testing.assert_allclose(fused.backward(grad), plain.backward(grad), rtol=1e-4, atol=1e-5)
    for key, value in plain.grads().items():
        np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    a, b = fused.train_step(x, labels), plain.train_step(x, labels)
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]
    for key, value in plain.grads().items():
        np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(fused.predict_proba(x), plain.predict_proba(x), rtol=1e-5, atol=1e-6)


def outcome(net, x):
    return net.flat_grads.copy(), net.flat_state.copy(), net.predict_proba(x)


def test_batch_norm_networks_cut_the_batch_across_threads(rng):
    """Batch norm's pieces meet at its Sync points: cut in two, a training step computes the
    whole batch's statistics, gradients and running averages, as uncut and layer by layer."""
    from cnntool.system.threads import set_threads

    x = rng.standard_normal((24, *RESIDUAL["input_shape"])).astype(np.float32)
    labels = rng.integers(0, 3, 24).astype(np.int64)
    results = {}
    try:
        for threads in (1, 2):
            set_threads(threads)
            net = cnntool.Network.from_spec(RESIDUAL, seed=2)
            assert net.pieces(24) == ([0, 24] if threads == 1 else [0, 12, 24])
            assert net.pieces(24, "predict") == net.pieces(24)
            loss, correct = net.train_step(x, labels)
            results[threads] = (
                loss,
                correct,
                net.flat_grads.copy(),
                net.flat_state.copy(),
                net.predict_proba(x),
            )
        plain = cnntool.Network.from_spec(RESIDUAL, seed=2)
        plain.use_plan = False
        loss, correct = plain.train_step(x, labels)
        results["layer by layer"] = (loss, correct, *outcome(plain, x))
        # The parts one after the other, as one piece, are the uncut step.
        net = cnntool.Network.from_spec(RESIDUAL, seed=2)
        assert len(net.plan.parts) == len(net.plan.syncs) + 1 == 11  # 5 batch norms, 2 syncs each
        loss, correct = net.plan.train_in_parts(x, labels, 1.0 / 24)
        results["in parts"] = (
            loss,
            correct,
            net.flat_grads.copy(),
            net.flat_state.copy(),
            net.predict_proba(x),
        )
    finally:
        set_threads(None)
    expected = results[1]
    for key, (loss, correct, grads, state, probs) in results.items():
        assert loss == pytest.approx(expected[0], rel=1e-5) and correct == expected[1], key
        np.testing.assert_allclose(grads, expected[2], rtol=1e-4, atol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(state, expected[3], rtol=1e-5, atol=1e-6, err_msg=str(key))
        np.testing.assert_allclose(probs, expected[4], rtol=1e-5, atol=1e-6, err_msg=str(key))
    assert np.abs(expected[3]).max() > 0.01  # the running statistics moved


@pytest.mark.parametrize("name", sorted(SPECS))
def test_inference_shares_buffers_and_reads_nothing_stale(name, rng):
    fused = cnntool.Network.from_spec(SPECS[name], seed=2)
    plain = cnntool.Network.from_spec(SPECS[name], seed=2)
    plain.use_plan = False
    x = rng.standard_normal((12, *fused.input_shape)).astype(np.float32)
    labels = rng.integers(0, fused.output_shape[0], 12).astype(np.int64)
    expected = plain.predict_proba(x)
    plan = fused.plan
    np.testing.assert_allclose(fused.predict_proba(x), expected, rtol=1e-5, atol=1e-6)
    # Predicting allocates only the shared inference buffers, a fraction of training's.
    assert plan.memory["inference"] < plan.memory["training"] / 2
    for space in plan.workspaces.values():
        assert not space.full and space.ws.size == plan.layout.shared["ws"] * space.n
    fused.train_step(x, labels)  # the full workspace replaces the inference one
    assert all(space.full for space in plan.workspaces.values())
    plain.train_step(x, labels)  # (which moved batch norm's running statistics)
    expected = plain.predict_proba(x)
    # Whatever the workspace held, every shared buffer is written before it is read.
    for space in plan.workspaces.values():
        space.ws[:] = np.nan
    np.testing.assert_allclose(fused.predict_proba(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-5, atol=1e-5)
    predictions = np.empty(12, np.int64)
    loss, correct = fused.evaluate_batch(x, labels, predictions)
    np.testing.assert_array_equal(predictions, expected.argmax(axis=1))
    reference = -np.log(expected[np.arange(12), labels]).sum()
    assert loss == pytest.approx(reference, rel=1e-4) and correct == int((predictions == labels).sum())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_graph_matches_pytorch_forward_loss_and_sgd_steps(name, rng):
    torch = pytest.importorskip("torch")
    net = cnntool.Network.from_spec(SPECS[name], seed=3)
    model = torch_graph(torch, net)
    x = rng.standard_normal((7, *net.input_shape)).astype(np.float32)
    model.eval()
    np.testing.assert_allclose(net.forward(x), model(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    model.train()
    ours = cnntool.optim.SGD(net, lr=0.05, momentum=0.9)
    theirs = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        x = rng.standard_normal((16, *net.input_shape)).astype(np.float32)
        labels = rng.integers(0, net.output_shape[0], 16)
        loss, _ = net.train_step(x, labels.astype(np.int64))
        ours.step()
        theirs.zero_grad()
        expected = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels))
        expected.backward()
        theirs.step()
        assert loss / 16 == pytest.approx(expected.item(), rel=1e-4)
    found = torch_weights(model, net)
    for key, value in {**net.params(), **net.state()}.items():
        np.testing.assert_allclose(value, found[key], rtol=1e-4, atol=2e-5, err_msg=key)


def test_graph_bundle_round_trip(tmp_path, rng):
    net = cnntool.Network.from_spec(RESIDUAL, seed=1)
    cnntool.save_bundle(net, tmp_path / "r.cnnb")
    loaded = cnntool.load_bundle(tmp_path / "r.cnnb").network
    assert [layer.sources for layer in loaded.layers] == [layer.sources for layer in net.layers]
    x = rng.standard_normal((3, *net.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), net.forward(x))


def test_flat_specs_read_the_layer_before(root):
    spec = validate_spec(root / "models/seed_cnn.json")
    net = cnntool.Network.build(spec, None)
    assert [layer.sources for layer in net.layers] == [(k - 1,) for k in range(len(net.layers))]
    assert all(config.inputs is None for config in spec.layers)


def spec_of(*layers, input_shape=(2, 8, 8)):
    return {"input_shape": list(input_shape), "layers": list(layers)}


CONV = {"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1}
TAIL = [{"type": "flatten", "name": "f"}, {"type": "dense", "units": 2, "name": "d"}]


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            [{**CONV, "name": "conv"}, {"type": "relu", "name": "r", "inputs": ["cnov"]}, *TAIL],
            "layer 1 'r' (relu): input 'cnov' is not the name of a layer; did you mean 'conv'?",
        ),
        (
            [{**CONV, "name": "a", "inputs": ["b"]}, {**CONV, "name": "b"}, *TAIL],
            "layer 0 'a' (conv2d): input 'b' is layer 1, which comes later; a layer reads only layers "
            "before it (so a network has no cycles): move it after 'b'",
        ),
        (
            [{**CONV, "name": "a"}, {**CONV, "name": "a"}, *TAIL],
            "layer 1 (conv2d): name 'a' is already the name of layer 0; layer names must be unique",
        ),
        (
            [{**CONV, "name": "a"}, {"type": "add", "name": "sum", "inputs": ["a"]}, *TAIL],
            "layer 1 'sum' (add): takes at least 2 inputs, received 1 ['a']",
        ),
        (
            [{**CONV, "name": "a"}, {"type": "relu", "name": "r", "inputs": ["a", "input"]}, *TAIL],
            "layer 1 'r' (relu): takes 1 input, received 2 ['a', 'input']; join branches first with an "
            "add or concat layer",
        ),
        (
            [
                {**CONV, "name": "a", "filters": 4, "stride": 2},
                {"type": "add", "name": "s", "inputs": ["a", "input"]},
                *TAIL,
            ],
            "layer 1 's' (add): inputs must have one shape; input 0 has (4, 4, 4), input 1 has (2, 8, 8); "
            'project input 1 with {"type": "conv2d", "filters": 4, "kernel_size": 1, "stride": 2} on its '
            "branch (inputs: 'a' gives (4, 4, 4), 'input' gives (2, 8, 8))",
        ),
        (
            [
                {**CONV, "name": "a", "stride": 2},
                {"type": "concat", "name": "j", "inputs": ["a", "input"]},
                *TAIL,
            ],
            "layer 1 'j' (concat): inputs must have equal height and width; input 0 is 4x4 (2, 4, 4), "
            "input 1 is 8x8 (2, 8, 8) (inputs: 'a' gives (2, 4, 4), 'input' gives (2, 8, 8))",
        ),
        (
            [
                {**CONV, "name": "a"},
                {**CONV, "name": "unused"},
                {**CONV, "name": "c", "inputs": ["a"]},
                *TAIL,
            ],
            "layer 1 'unused' (conv2d): its output is not read by any later layer (only the last layer's "
            "output is the network's); name it in a later layer's `inputs`, or remove it",
        ),
        (
            [{**CONV, "name": "input"}, *TAIL],
            "layer 0 (conv2d): the name 'input' stands for the network input in `inputs`; give the layer "
            "another name",
        ),
    ],
    ids=[
        "unknown",
        "later",
        "duplicate",
        "too-few",
        "too-many",
        "add-shapes",
        "concat-sizes",
        "unused",
        "reserved",
    ],
)
def test_bad_graphs_name_the_layer(layers, message):
    with pytest.raises(SpecError) as caught:
        validate_spec(spec_of(*layers))
    assert str(caught.value) == message


def test_bad_graph_on_the_command_line_is_one_line(tmp_path, root):
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec_of({**CONV, "name": "conv"}, {"type": "relu", "inputs": ["con"]}, *TAIL)))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cnntool")), "inspect", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: layer 1 'relu_1' (relu): input 'con' is not the name of a layer; did you mean 'conv'?"
    ]


def test_the_kit_checks_every_input_of_a_merge_layer():
    from cnntool.layers.merge import Add, AddConfig
    from cnntool.testing import check_gradients, check_shapes

    class HalfAdd(Add):
        def backward(self, grad_out):
            return [grad_out, grad_out * np.float32(0.5)]

    class OneGradient(Add):
        def backward(self, grad_out):
            return [grad_out]

    shapes = ((2, 3, 3), (2, 3, 3))
    good = Add(AddConfig())
    good.build(shapes, None)
    assert set(check_gradients(good)) == {"x0", "x1"}
    half = HalfAdd(AddConfig())
    half.build(shapes, None)
    with pytest.raises(AssertionError, match=r"add: gradient of x1\[.*\] is .*, finite differences give"):
        check_gradients(half)
    one = OneGradient(AddConfig())
    one.build(shapes, None)
    with pytest.raises(AssertionError, match="backward returned 1 gradients for 2 inputs"):
        check_shapes(one)


def test_inspect_shows_what_each_layer_reads_and_draws_the_graph(tmp_path, root):
    import subprocess
    import sys
    from pathlib import Path

    cnntool_cli = str(Path(sys.executable).with_name("cnntool"))
    path = tmp_path / "residual.json"
    path.write_text(json.dumps(RESIDUAL))
    info = json.loads(subprocess.run([cnntool_cli, "inspect", path, "--json"], capture_output=True,
                                     text=True, check=True).stdout)  # fmt: skip
    rows = {row["name"]: row for row in info["layers"]}
    net = cnntool.Network.from_spec(RESIDUAL)
    assert info["activation_memory"] == {"compiled": True, **net.plan.memory}
    assert rows["stem"]["inputs"] == ["input"]
    assert rows["b2_add"]["inputs"] == ["b2_bn2", "b2_bnp"]
    assert rows["b2_proj"]["inputs"] == ["b1_out"] and rows["b2_proj"]["output_shape"] == [6, 5, 5]
    wide = {**os.environ, "COLUMNS": "200"}
    table = subprocess.run(
        [cnntool_cli, "inspect", path], capture_output=True, text=True, check=True, env=wide
    )
    header = next(line for line in table.stdout.splitlines() if " name " in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")][:4] == ["#", "name", "type", "inputs"]
    kib = net.plan.memory["inference"] / 1024
    assert f"activations per example: {kib:,.1f} KiB inference, buffers shared;" in table.stdout
    add_row = next(line for line in table.stdout.splitlines() if " b2_add " in line)
    assert "│ b2_bn2, b2_bnp " in add_row
    dot = subprocess.run([cnntool_cli, "inspect", path, "--dot"], capture_output=True, text=True, check=True)
    lines = dot.stdout.splitlines()
    assert lines[0] == 'digraph "residual" {' and lines[-1] == "}"
    index = {row["name"]: row["index"] for row in info["layers"]}
    edges = {line.strip() for line in lines if "->" in line}
    assert f"n{index['b2_bn2']} -> n{index['b2_add']};" in edges
    assert f"n{index['b2_bnp']} -> n{index['b2_add']};" in edges
    assert "input -> n0;" in edges
    assert len(edges) == sum(len(row["inputs"]) for row in info["layers"])
    flat = subprocess.run([cnntool_cli, "inspect", root / "models/seed_cnn.json"], capture_output=True,
                          text=True, check=True, env=wide).stdout  # fmt: skip
    assert "inputs" not in flat  # a stack reads the layer before: no column
