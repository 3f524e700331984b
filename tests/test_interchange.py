"""ONNX and safetensors, both ways: exported graphs run in onnxruntime to cnntool's logits,
PyTorch's exports and state_dicts import to PyTorch's outputs, round trips keep the digest,
and every bad file is one clean CnntoolError with no bundle written."""

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app
from cnntool.errors import CnntoolError, InterchangeError
from cnntool.interchange import export_file, import_file

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(autouse=True)
def layer_by_layer(monkeypatch):
    """Networks run layer by layer: the kernels are shared, so no plan is compiled per spec."""
    monkeypatch.setenv("CNNTOOL_FUSE", "0")


def conv(name, filters, kernel=3, **options):
    return {"type": "conv2d", "name": name, "filters": filters, "kernel_size": kernel, **options}


# Strided and padded convolutions ("same" with its extra at the bottom and right, even
# kernels, rectangular ones), batch norm, both poolings, a residual block with a projection
# and a concat of branches: what the held-out specs hold.
GRAPH = {
    "name": "graph",
    "input_shape": [3, 13, 12],
    "classes": ["cat", "dog", "eel", "fox", "gnu"],
    "layers": [
        conv("stem", 8, 3, stride=2, padding="same"),
        {"type": "batchnorm2d", "name": "stem_bn"},
        {"type": "relu", "name": "stem_relu"},
        conv("b1_c1", 8, 3, padding=1, use_bias=False),
        {"type": "batchnorm2d", "name": "b1_bn1"},
        {"type": "relu", "name": "b1_r1"},
        conv("b1_c2", 12, [2, 3], stride=[1, 2], padding="same", use_bias=False),
        {"type": "batchnorm2d", "name": "b1_bn2"},
        conv("b1_proj", 12, 1, stride=[1, 2], inputs=["stem_relu"], use_bias=False),
        {"type": "add", "name": "b1_add", "inputs": ["b1_bn2", "b1_proj"]},
        {"type": "relu", "name": "b1_out"},
        conv("br_a", 4, 1),
        conv("br_b", 3, 3, padding=[1, 0], inputs=["b1_out"]),
        {"type": "sigmoid", "name": "br_b_act"},
        conv("br_b_pad", 3, 1, padding=[0, 1]),
        {"type": "maxpool2d", "name": "br_c", "pool_size": 3, "stride": 1, "inputs": ["b1_out"]},
        conv("br_c_pad", 2, 1, padding=1),
        {"type": "concat", "name": "join", "inputs": ["br_a", "br_b_pad", "br_c_pad"]},
        {"type": "avgpool2d", "name": "pool", "pool_size": 2, "stride": 1},
        {"type": "dropout", "name": "drop", "rate": 0.3},
        {"type": "global_avgpool2d", "name": "gap"},
        {"type": "dense", "name": "head", "units": 5},
    ],
}
# A flat stack holding the other built-in types: three-way add, tanh, batchnorm1d, softmax.
STACK = {
    "name": "stack",
    "input_shape": [1, 12, 12],
    "layers": [
        conv("c1", 6, 5),
        {"type": "tanh", "name": "t1"},
        {"type": "maxpool2d", "name": "p1", "pool_size": [2, 3], "stride": [2, 2]},
        conv("c2", 6, 1, inputs=["p1"]),
        conv("c3", 6, 3, padding=1, inputs=["p1"]),
        {"type": "add", "name": "sum3", "inputs": ["p1", "c2", "c3"]},
        {"type": "flatten", "name": "flat"},
        {"type": "dense", "name": "d1", "units": 16, "use_bias": False},
        {"type": "batchnorm1d", "name": "bn1d"},
        {"type": "relu", "name": "r"},
        {"type": "dense", "name": "d2", "units": 4},
        {"type": "softmax", "name": "probs"},
    ],
}
SPECS = {"graph": GRAPH, "stack": STACK}


def bundle_of(spec, path, seed=3):
    """A bundle of `spec` with random weights and running statistics (not the initial ones)."""
    net = cnntool.Network.from_spec(spec, seed=seed)
    rng = np.random.default_rng(seed)
    for key, value in net.state().items():
        value[...] = (
            rng.uniform(0.5, 1.5, value.shape) if key.endswith("var") else rng.normal(0, 0.3, value.shape)
        )
    for key, value in net.params().items():
        if not key.endswith("weight"):
            value[...] = rng.normal(0, 0.3, value.shape)
    cnntool.save_bundle(net, path, meta={"preprocessing": {"pixel_scale": 1 / 255, "mean": 0.5, "std": 0.25}})
    return cnntool.load_bundle(path)


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, session.run(None, {"input": x})


@pytest.mark.parametrize("name", sorted(SPECS))
def test_onnxruntime_computes_cnntools_logits(name, tmp_path):
    bundle = bundle_of(SPECS[name], tmp_path / "net.cnnb")
    report = export_file(tmp_path / "net.cnnb", tmp_path / "net.onnx")
    x = np.random.default_rng(0).standard_normal((7, *bundle.network.input_shape)).astype(np.float32)
    session, (found,) = run_onnx(tmp_path / "net.onnx", x)
    np.testing.assert_allclose(found, bundle.network.forward(x), rtol=1e-4, atol=1e-5)
    # The batch is dynamic: one image runs through the same file.
    np.testing.assert_allclose(
        session.run(None, {"input": x[:1]})[0], bundle.network.forward(x[:1]), rtol=1e-4, atol=1e-5
    )
    model = onnx.load(tmp_path / "net.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, [(o.domain, o.version) for o in model.opset_import]) == (8, [("", 17)])
    assert report["outputs"] == ["probabilities" if name == "stack" else "logits"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch" and not batch.HasField("dim_value")
    for node in model.graph.node:
        assert "auto_pad" not in {a.name for a in node.attribute}, node.name
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            assert "pads" in {a.name for a in node.attribute}, node.name
        assert node.op_type != "Dropout"
    layer_names = {layer.name for layer in bundle.network.layers}
    assert {node.name.split("/")[0] for node in model.graph.node} <= layer_names
    assert {i.name for i in model.graph.initializer} == {*bundle.network.params(), *bundle.network.state()}
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["cnntool.classes"]) == bundle.network.classes
    assert json.loads(props["cnntool.preprocessing"])["std"] == 0.25
    assert props["cnntool.digest"] == bundle.digest and props["cnntool.version"] == cnntool.__version__


def test_softmax_adds_probabilities_and_strided_same_conv_pads_explicitly(tmp_path):
    bundle = bundle_of(GRAPH, tmp_path / "net.cnnb")
    export_file(tmp_path / "net.cnnb", tmp_path / "net.onnx", softmax=True)
    x = np.random.default_rng(1).standard_normal((7, 3, 13, 12)).astype(np.float32)
    session, (logits, probabilities) = run_onnx(tmp_path / "net.onnx", x)
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    np.testing.assert_allclose(logits, bundle.network.forward(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probabilities, bundle.network.predict_proba(x), rtol=1e-4, atol=1e-6)
    stem = next(n for n in onnx.load(tmp_path / "net.onnx").graph.node if n.name == "stem")
    pads = next(a for a in stem.attribute if a.name == "pads")
    # "same" at stride 2: height 13 gets one row each side, width 12 one column at the right.
    assert list(pads.ints) == [1, 0, 1, 1]


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_export_then_import_gives_the_same_digest(name, fmt, tmp_path):
    bundle = bundle_of(SPECS[name], tmp_path / "net.cnnb")
    export_file(tmp_path / "net.cnnb", tmp_path / f"net.{fmt}")
    report = import_file(tmp_path / f"net.{fmt}", tmp_path / "back.cnnb")
    back = cnntool.load_bundle(tmp_path / "back.cnnb")
    assert report["digest"] == back.digest == bundle.digest
    assert back.network.classes == bundle.network.classes
    assert back.preprocessing["std"] == 0.25
    assert back.meta["imported_from"]["format"] == fmt
    x = np.random.default_rng(2).standard_normal((7, *bundle.network.input_shape)).astype(np.float32)
    np.testing.assert_allclose(back.network.forward(x), bundle.network.forward(x), rtol=1e-5, atol=1e-6)
    kept = [
        layer.name
        for layer in bundle.network.layers
        if fmt == "safetensors" or layer.config.type != "dropout"
    ]
    if name == "stack" or fmt == "safetensors":
        assert [layer.name for layer in back.network.layers] == kept


def residual_torch_model(torch):
    """A small ResNet in PyTorch: stem, an identity block, a strided block with a projection."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.layer1 = Block(8, 8, 1)
            self.layer2 = Block(8, 16, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
            return self.fc(self.drop(torch.flatten(self.pool(x), 1)))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def residual_spec():
    """The cnntool spec of `residual_torch_model`, layer for layer."""

    def block(name, source, cin, cout, stride):
        layers = [
            conv(f"{name}_conv1", cout, 3, stride=stride, padding=1, use_bias=False, inputs=[source]),
            {"type": "batchnorm2d", "name": f"{name}_bn1"},
            {"type": "relu", "name": f"{name}_relu1"},
            conv(f"{name}_conv2", cout, 3, padding=1, use_bias=False),
            {"type": "batchnorm2d", "name": f"{name}_bn2"},
        ]
        shortcut = source
        if stride != 1 or cin != cout:
            layers += [
                conv(f"{name}_down", cout, 1, stride=stride, use_bias=False, inputs=[source]),
                {"type": "batchnorm2d", "name": f"{name}_down_bn"},
            ]
            shortcut = f"{name}_down_bn"
        return [
            *layers,
            {"type": "add", "name": f"{name}_add", "inputs": [f"{name}_bn2", shortcut]},
            {"type": "relu", "name": f"{name}_out"},
        ]

    return {
        "name": "resnet",
        "input_shape": [1, 14, 14],
        "layers": [
            conv("stem", 8, 3, padding=1),
            {"type": "batchnorm2d", "name": "bn"},
            {"type": "relu", "name": "stem_relu"},
            *block("layer1", "stem_relu", 8, 8, 1),
            *block("layer2", "layer1_out", 8, 16, 2),
            {"type": "global_avgpool2d", "name": "pool"},
            {"type": "dropout", "name": "drop", "rate": 0.2},
            {"type": "dense", "name": "fc", "units": 10},
        ],
    }


def exporters():
    """torch.onnx.export as PyTorch users call it: the TorchScript exporter (constant folding
    merges batch norm into the convolutions, or keeps it without), and the default
    torch.export-based one where onnxscript is installed."""
    found = ["torchscript", "torchscript-unfolded"]
    try:
        import onnxscript  # noqa: F401

        found.append("dynamo")
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("exporter", exporters())
def test_pytorch_residual_network_exported_by_torch_imports_to_its_outputs(exporter, tmp_path):
    torch = pytest.importorskip("torch")
    model = residual_torch_model(torch)
    x = torch.randn(7, 1, 14, 14)
    if exporter == "dynamo":
        options = {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("batch")},), "opset_version": 18}
    else:
        options = {"dynamo": False, "dynamic_axes": {"x": {0: "batch"}}, "opset_version": 17}
        options["do_constant_folding"] = exporter == "torchscript"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation, the other's notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:2],), str(tmp_path / "resnet.onnx"), input_names=["x"], **options)
    result = runner.invoke(
        app, ["import", str(tmp_path / "resnet.onnx"), "-o", str(tmp_path / "resnet.cnnb"), "--classes",
              ",".join("abcdefghij"), "--preprocessing", '{"mean": 0.1307, "std": 0.3081}', "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = cnntool.load_bundle(tmp_path / "resnet.cnnb")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(bundle.network.forward(x.numpy()), expected, rtol=1e-4, atol=1e-5)
    assert bundle.network.classes == list("abcdefghij")
    assert (bundle.preprocessing["mean"], bundle.preprocessing["std"]) == (0.1307, 0.3081)
    types = [layer.config.type for layer in bundle.network.layers]
    assert types.count("add") == 2 and "global_avgpool2d" in types
    assert ("batchnorm2d" in types) == (exporter == "torchscript-unfolded")
    assert bundle.meta["imported_from"]["producer"].startswith("pytorch")


def test_pytorch_state_dict_as_safetensors_imports_by_order_and_shape(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = residual_torch_model(torch)
    safetensors_torch.save_file(model.state_dict(), str(tmp_path / "resnet.safetensors"))
    (tmp_path / "resnet.json").write_text(json.dumps(residual_spec()))
    result = runner.invoke(
        app, ["import", str(tmp_path / "resnet.safetensors"), "--spec", str(tmp_path / "resnet.json"), "-o",
              str(tmp_path / "resnet.cnnb")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "weights matched by order and shape" in result.output
    assert "layer2.down.0.weight -> layer2_down.weight" in result.output
    assert "  bn.running_var -> bn.running_var" in result.output
    assert "layer1.bn1.running_mean -> layer1_bn1.running_mean" in result.output
    assert "skipped bn.num_batches_tracked" in result.output
    bundle = cnntool.load_bundle(tmp_path / "resnet.cnnb")
    x = torch.randn(7, 1, 14, 14)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(bundle.network.forward(x.numpy()), expected, rtol=1e-4, atol=1e-5)


def test_safetensors_mismatch_names_the_key_and_both_shapes(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = residual_torch_model(torch).state_dict()
    state["fc.weight"] = torch.zeros(10, 15)
    safetensors_torch.save_file(state, str(tmp_path / "bad.safetensors"))
    spec = residual_spec()
    with pytest.raises(InterchangeError, match=r"fc\.weight is \[10, 16\] but 'fc\.weight' is \[10, 15\]"):
        import_file(tmp_path / "bad.safetensors", tmp_path / "out.cnnb", spec=spec)
    # Named as the spec names them, a wrong shape is reported by name.
    net = cnntool.Network.from_spec(spec, seed=0)
    arrays = {**net.params(), **net.state()}
    arrays["layer2_conv2.weight"] = np.zeros((16, 16, 3, 1), np.float32)
    (tmp_path / "named.safetensors").write_bytes(safetensors_numpy.save(arrays))
    with pytest.raises(
        InterchangeError,
        match=r"'layer2_conv2\.weight': the spec builds \[16, 16, 3, 3\], the file has \[16, 16, 3, 1\]",
    ):
        import_file(tmp_path / "named.safetensors", tmp_path / "out.cnnb", spec=spec)
    assert not (tmp_path / "out.cnnb").exists()
    with pytest.raises(InterchangeError, match="give the network they belong to with --spec SPEC"):
        import_file(tmp_path / "named.safetensors", tmp_path / "out.cnnb")


# --- bad files -----------------------------------------------------------------------------


def graph_model(nodes, initializers=(), opset=17, input_shape=(1, 1, 6, 6), output="y", **model_options):
    helper = onnx.helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *input_shape[1:]])],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)], initializer=list(initializers),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **model_options)


def weight(name, shape):
    return onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)


def cli_import(path, out):
    result = runner.invoke(app, ["import", str(path), "-o", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not Path(out).exists()
    assert not [p for p in Path(out).parent.iterdir() if p.name.endswith(".tmp")]
    return lines[0]


def test_random_bytes_and_empty_files_are_clean_errors(tmp_path):
    files = {
        "random.onnx": np.random.default_rng(0).bytes(3000),
        "empty.onnx": b"",
        "random.safetensors": np.random.default_rng(1).bytes(3000),
        "text.onnx": b"hello",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        line = cli_import(tmp_path / name, tmp_path / "out.cnnb")
        assert "not" in line or "empty" in line, line
    (tmp_path / "model.pt").write_bytes(b"x")
    assert "cannot tell the format" in cli_import(tmp_path / "model.pt", tmp_path / "out.cnnb")
    assert "file not found" in cli_import(tmp_path / "missing.onnx", tmp_path / "out.cnnb")


def test_every_unsupported_op_and_feature_is_listed_in_one_message(tmp_path):
    helper = onnx.helper
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="dilated", dilations=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("Conv", ["x", "w"], ["d"], name="lopsided", pads=[1, 0, 0, 0]),
        helper.make_node("Erf", ["c"], ["e"], name="erf_1"),
        helper.make_node("Shape", ["d"], ["s"], name="shape_1"),
        helper.make_node("Gather", ["s", "i"], ["g"], name="gather_1"),
        helper.make_node("Reshape", ["e", "g"], ["y"], name="reshape_1"),
    ]
    inits = [weight("w", (2, 1, 3, 3)), onnx.numpy_helper.from_array(np.array([0], np.int64), "i")]
    onnx.save(graph_model(nodes, inits), tmp_path / "m.onnx")
    line = cli_import(tmp_path / "m.onnx", tmp_path / "out.cnnb")
    assert "unsupported ops: Erf ('erf_1'), Gather ('gather_1'), Shape ('shape_1')" in line
    assert "node 'dilated' (Conv): dilations [2, 2] are not supported" in line
    assert "node 'lopsided' (Conv): asymmetric pads [1, 0, 0, 0]" in line
    grouped = [helper.make_node("Conv", ["x", "w"], ["y"], name="grouped", group=2)]
    onnx.save(
        graph_model(grouped, [weight("w", (4, 1, 3, 3))], input_shape=(1, 2, 6, 6)), tmp_path / "g.onnx"
    )
    from cnntool.model.registry import get_registry

    if "depthwise_conv2d" not in get_registry().types:
        assert "node 'grouped' (Conv): group=2" in cli_import(tmp_path / "g.onnx", tmp_path / "out.cnnb")


def test_custom_domains_functions_and_old_opsets_are_refused(tmp_path):
    helper = onnx.helper
    custom = graph_model([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(custom, tmp_path / "custom.onnx")
    assert "custom operator domains are not supported: 'com.microsoft'" in cli_import(
        tmp_path / "custom.onnx", tmp_path / "out.cnnb"
    )
    old = graph_model([helper.make_node("Relu", ["x"], ["y"])], opset=11)
    onnx.save(old, tmp_path / "old.onnx")
    assert "opset 11 is not supported; cnntool reads opsets 13 to" in cli_import(
        tmp_path / "old.onnx", tmp_path / "out.cnnb"
    )


def external_model(tmp_path, location):
    """A dense layer whose weight lies in an external file at `location`."""
    helper = onnx.helper
    tensor = weight("fc.weight", (3, 36))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": str(3 * 36 * 4)}.items():
        tensor.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["y"], name="fc", transB=1),
    ]
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    onnx.save(graph_model(nodes, [tensor]), folder / "m.onnx")
    return folder / "m.onnx"


def test_external_data_only_from_inside_the_models_folder(tmp_path):
    data = np.arange(3 * 36, dtype=np.float32).tobytes()
    (tmp_path / "secret.bin").write_bytes(data)
    for location in ["../secret.bin", str(tmp_path / "secret.bin")]:
        path = external_model(tmp_path, location)
        assert "points outside the model's folder" in cli_import(path, tmp_path / "out.cnnb")
    (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    assert "points outside" in cli_import(external_model(tmp_path, "link.bin"), tmp_path / "out.cnnb")
    (tmp_path / "model" / "short.bin").write_bytes(data[:100])
    assert "too short" in cli_import(external_model(tmp_path, "short.bin"), tmp_path / "out.cnnb")
    (tmp_path / "model" / "weights.bin").write_bytes(data)
    import_file(external_model(tmp_path, "weights.bin"), tmp_path / "out.cnnb")
    net = cnntool.load_bundle(tmp_path / "out.cnnb").network
    np.testing.assert_array_equal(net.params()["fc.weight"].ravel(), np.arange(3 * 36))


def test_a_failed_import_leaves_an_existing_bundle_as_it_was(tmp_path):
    bundle_of(STACK, tmp_path / "keep.cnnb")
    before = (tmp_path / "keep.cnnb").read_bytes()
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07" + b"\xff" * 50)
    with pytest.raises(InterchangeError):
        import_file(tmp_path / "bad.onnx", tmp_path / "keep.cnnb")
    assert (tmp_path / "keep.cnnb").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "keep.cnnb"]


def test_missing_extra_says_how_to_install_it(tmp_path, monkeypatch):
    bundle_of(STACK, tmp_path / "net.cnnb")
    for module in ("onnx", "safetensors", "safetensors.numpy"):
        monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError
    for suffix in ("onnx", "safetensors"):
        with pytest.raises(InterchangeError, match=r"install the extra: pip install 'cnntool\[onnx\]'"):
            export_file(tmp_path / "net.cnnb", tmp_path / f"net.{suffix}")
    assert not (tmp_path / "net.onnx").exists()


# --- plugins -------------------------------------------------------------------------------


class OpaqueConfig(cnntool.LayerConfig):
    type: Literal["opaque"] = "opaque"


class Opaque(cnntool.Layer):
    """A plugin's layer without an ONNX lowering (the identity)."""

    Config = OpaqueConfig

    def forward(self, x, *, training=False):
        return x

    def backward(self, grad_out):
        return grad_out


def install(classes, monkeypatch):
    """The shared registry, with layer classes added as if `dist` provided them."""
    from cnntool.model.registry import LayerType, Registry

    registry = Registry.discover()
    for name, (cls, dist) in classes.items():
        if name not in registry.types:
            registry.add(LayerType(name, f"{cls.__module__}:{cls.__name__}", dist, "0.1.0", layer_class=cls))
    monkeypatch.setattr("cnntool.model.registry._registry", registry)


def test_a_layer_without_lowering_names_itself_its_type_and_distribution(tmp_path, monkeypatch):
    install({"opaque": (Opaque, "cnntool-opaque")}, monkeypatch)
    spec = {"input_shape": [1, 4, 4], "layers": [{"type": "opaque", "name": "mystery"}, {"type": "flatten"},
                                                  {"type": "dense", "units": 2}]}  # fmt: skip
    cnntool.save_bundle(cnntool.Network.from_spec(spec), tmp_path / "p.cnnb")
    with pytest.raises(
        InterchangeError,
        match=r"no ONNX lowering \(Layer.onnx_nodes\) for layer 'mystery' \(type 'opaque', provided by "
        r"cnntool-opaque==0.1.0\)",
    ):
        export_file(tmp_path / "p.cnnb", tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()


def test_extras_layers_lower_to_onnx(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "cnntool-extras" / "src"))
    from cnntool_extras.depthwise_conv2d import DepthwiseConv2D
    from cnntool_extras.leaky_relu import LeakyReLU
    from cnntool_extras.prelu import PReLU

    install(
        {"leaky_relu": (LeakyReLU, "cnntool-extras"), "prelu": (PReLU, "cnntool-extras"),
         "depthwise_conv2d": (DepthwiseConv2D, "cnntool-extras")}, monkeypatch,
    )  # fmt: skip
    spec = {
        "input_shape": [2, 9, 8],
        "layers": [
            {
                "type": "depthwise_conv2d",
                "kernel_size": 3,
                "stride": 2,
                "padding": "same",
                "depth_multiplier": 2,
            },
            {"type": "prelu", "init": 0.3},
            {"type": "depthwise_conv2d", "kernel_size": [3, 2], "padding": 1, "use_bias": False},
            {"type": "leaky_relu", "negative_slope": 0.2},
            {"type": "prelu", "shared": True, "init": 0.1},
            {"type": "flatten"},
            {"type": "dense", "units": 6},
            {"type": "prelu"},
            {"type": "dense", "units": 3},
        ],
    }
    net = cnntool.Network.from_spec(spec, seed=4)
    rng = np.random.default_rng(5)
    for key, value in net.params().items():
        if "prelu" in key:
            value[...] = rng.uniform(0.05, 0.5, value.shape)
    cnntool.save_bundle(net, tmp_path / "extras.cnnb")
    export_file(tmp_path / "extras.cnnb", tmp_path / "extras.onnx")
    x = rng.standard_normal((7, 2, 9, 8)).astype(np.float32)
    _, (found,) = run_onnx(tmp_path / "extras.onnx", x)
    np.testing.assert_allclose(found, net.forward(x), rtol=1e-4, atol=1e-5)
    ops = [node.op_type for node in onnx.load(tmp_path / "extras.onnx").graph.node]
    assert ops.count("PRelu") == 3 and ops.count("LeakyRelu") == 1 and ops.count("Conv") == 2
    # With cnntool-extras installed, a convolution with one group per channel comes back as
    # depthwise_conv2d; LeakyRelu and PRelu are not among the ops imported.
    with pytest.raises(InterchangeError) as refused:
        import_file(tmp_path / "extras.onnx", tmp_path / "back.cnnb")
    assert "unsupported ops: LeakyRelu ('leaky_relu_1'), PRelu ('prelu_1', 'prelu_2', 'prelu_3')" in str(
        refused.value
    )
    depthwise = {"input_shape": [2, 9, 8], "layers": [spec["layers"][0], *spec["layers"][5:7]]}
    cnntool.save_bundle(cnntool.Network.from_spec(depthwise, seed=1), tmp_path / "dw.cnnb")
    export_file(tmp_path / "dw.cnnb", tmp_path / "dw.onnx")
    import_file(tmp_path / "dw.onnx", tmp_path / "dw_back.cnnb")
    back = cnntool.load_bundle(tmp_path / "dw_back.cnnb")
    assert back.digest == cnntool.load_bundle(tmp_path / "dw.cnnb").digest
    assert back.network.layers[0].config.depth_multiplier == 2


# --- property tests: mutated files give only our errors ------------------------------------


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    layers = [
        conv("c", 2, 3, padding=1),
        {"type": "batchnorm2d", "name": "bn"},
        {"type": "relu", "name": "r"},
        {"type": "maxpool2d", "name": "p"},
        {"type": "flatten", "name": "f"},
        {"type": "dense", "name": "d", "units": 2},
    ]
    spec = {"input_shape": [1, 6, 6], "classes": ["a", "b"], "layers": layers}
    cnntool.save_bundle(cnntool.Network.from_spec(spec, seed=0), folder / "net.cnnb")
    export_file(folder / "net.cnnb", folder / "net.onnx")
    export_file(folder / "net.cnnb", folder / "net.safetensors")
    return {suffix: (folder / f"net.{suffix}").read_bytes() for suffix in ("onnx", "safetensors")}


@st.composite
def mutations(draw, size):
    """Byte changes to a file of `size` bytes: overwritten bytes, a cut, or an insertion."""
    kind = draw(st.sampled_from(["overwrite", "truncate", "insert"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, size - 1)), b""
    return kind, draw(st.integers(0, size - 1)), draw(st.binary(min_size=1, max_size=8))


def mutate(data, changes):
    data = bytearray(data)
    for kind, at, payload in changes:
        at = min(at, len(data))
        if kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = payload
        else:
            data[at : at + len(payload)] = payload
    return bytes(data)


@pytest.mark.parametrize("suffix", ["onnx", "safetensors"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.data())
def test_mutated_files_give_only_cnntool_errors(valid_files, suffix, changes):
    original = valid_files[suffix]
    edits = changes.draw(st.lists(mutations(len(original)), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"m.{suffix}"
        path.write_bytes(mutate(original, edits))
        try:
            import_file(path, Path(folder) / "out.cnnb")
        except CnntoolError:
            assert not (Path(folder) / "out.cnnb").exists()
        else:
            cnntool.load_bundle(Path(folder) / "out.cnnb")
