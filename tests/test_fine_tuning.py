"""Fine-tuning: `train SPEC --init-from BUNDLE` loads the layers that match by name and shape
and reports what it loaded, what changed and what is new; `--freeze NAME` keeps layers fixed;
resuming with a new `--lr` is allowed and noted in the history."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnntool
from cnntool.training.optim import SGD, AdamW
from pictures import picture_folder

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
BODY = [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "name": "features"},
    {"type": "relu"},
    {"type": "maxpool2d"},
    {"type": "flatten"},
]


def train(*args):
    return subprocess.run([CNNTOOL, "train", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A digit model (features + head) trained for one epoch on 600 sample digits."""
    folder = tmp_path_factory.mktemp("fine-tuning")
    sample = cnntool.load_dataset("mnist-sample")
    data = folder / "digits.npz"
    np.savez(data, x_train=sample.x_train[:600], y_train=sample.y_train[:600],
             x_test=sample.x_test[:100], y_test=sample.y_test[:100])  # fmt: skip
    spec = folder / "base.json"
    layers = [*BODY, {"type": "dense", "units": 10, "name": "head"}]
    spec.write_text(json.dumps({"name": "base", "input_shape": [1, 28, 28], "layers": layers}))
    out = folder / "base.cnnb"
    done = train(spec, "--data", data, "--out", out, "--epochs", 1, "--checkpoint-every", 1)
    assert done.returncode == 0, done.stderr
    return folder, data, out


def test_init_from_loads_matching_layers_reports_and_freezes(base):
    folder, _, bundle = base
    pictures = picture_folder(folder / "clothes", {0: "T-shirt", 1: "Trouser", 8: "Bag"}, 10)
    spec = folder / "clothes.json"
    layers = [*BODY, {"type": "dense", "units": 3, "name": "head"}, {"type": "relu"},
              {"type": "dense", "units": 3, "name": "extra"}]  # fmt: skip
    spec.write_text(json.dumps({"name": "clothes", "input_shape": [1, 28, 28], "layers": layers}))
    out = folder / "clothes.cnnb"
    done = train(spec, "--data", pictures, "--out", out, "--epochs", 2, "--init-from", bundle,
                 "--freeze", "features", "--weight-decay", "0.01")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[1:4] == [
        f"initialised from {bundle}: loaded features (40 parameters)",
        "  other shapes, initialised anew: head (weight (10, 676) -> (3, 676), bias (10,) -> (3,))",
        "  new, initialised: extra",
    ]
    assert lines[4] == "frozen: features (40 parameters)"
    before, after = cnntool.load_bundle(bundle).network.params(), cnntool.load_bundle(out).network.params()
    np.testing.assert_array_equal(after["features.weight"], before["features.weight"])
    np.testing.assert_array_equal(after["features.bias"], before["features.bias"])
    assert cnntool.load_bundle(out).meta["training"]["freeze"] == ["features"]


def test_freeze_errors_name_the_nearest_layer(base):
    folder, data, _ = base
    done = train(folder / "base.json", "--data", data, "--out", folder / "x.cnnb", "--freeze", "feature")
    assert done.returncode == 1
    assert done.stderr == (
        "error: --freeze feature: is not a layer of 'base' (layers with parameters: features, head); "
        "did you mean 'features'?\n"
    )
    assert not (folder / "x.cnnb").exists()


@pytest.mark.parametrize("kind", [SGD, AdamW])
def test_frozen_parameters_do_not_move_under_momentum_and_weight_decay(kind, rng):
    spec = {"input_shape": [1, 6, 6], "classes": ["a", "b"], "layers": [*BODY[:1], *BODY[3:],
            {"type": "dense", "units": 2}]}  # fmt: skip
    net = cnntool.Network.from_spec(spec, seed=0)
    options = {"momentum": 0.9, "weight_decay": 0.1} if kind is SGD else {"weight_decay": 0.1}
    optimizer = kind(net, lr=0.1, **options)
    optimizer.freeze(["features.weight", "features.bias"])
    frozen = net.params()["features.weight"].copy()
    dense = net.params()["dense_1.weight"].copy()
    x = rng.random((4, 1, 6, 6), dtype=np.float32)
    for _ in range(3):
        net.train_step(x, np.array([0, 1, 0, 1]))
        optimizer.step()
    np.testing.assert_array_equal(net.params()["features.weight"], frozen)
    assert not np.array_equal(net.params()["dense_1.weight"], dense)


def test_resuming_with_a_new_learning_rate_is_noted_in_the_history(base):
    folder, _, bundle = base
    resumed = folder / "resumed.cnnb"
    done = train("--resume", bundle, "--out", resumed, "--epochs", 2, "--lr", 0.05)
    assert done.returncode == 0, done.stderr
    history = cnntool.load_bundle(resumed).meta["history"]
    assert [record["lr"] for record in history] == [0.01, 0.05]
    assert "lr_changed" not in history[0]
    assert history[1]["lr_changed"] == {"from": 0.01, "to": 0.05}
    assert cnntool.load_bundle(resumed).meta["training"]["lr"] == 0.05
