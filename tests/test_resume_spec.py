"""`cnntool train SPEC --resume BUNDLE`: the command rerun from the shell's history with
--resume added continues the run when SPEC is the bundle's own spec, and says what differs
when it is not."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnntool

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
SPEC = {
    "name": "tiny",
    "input_shape": [1, 28, 28],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d"},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
    "training": {"epochs": 2, "batch_size": 64},
}


def train(*args):
    return subprocess.run([CNNTOOL, "train", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-epoch run of SPEC on 600 sample digits."""
    folder = tmp_path_factory.mktemp("resume-spec")
    sample = cnntool.load_dataset("mnist-sample")
    data = folder / "digits.npz"
    np.savez(data, x_train=sample.x_train[:600], y_train=sample.y_train[:600],
             x_test=sample.x_test[:100], y_test=sample.y_test[:100])  # fmt: skip
    spec = folder / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = folder / "run.cnnb"
    done = train(spec, "--data", data, "--out", out, "--epochs", 1)
    assert done.returncode == 0, done.stderr
    return folder, spec, data, out


def test_the_same_spec_is_accepted(checkpoint):
    folder, spec, data, out = checkpoint
    # The same spec written differently (defaults spelled out, names given) is the same spec.
    same = json.loads(spec.read_text())
    same["layers"][0].update(name="conv2d_1", stride=1, padding=0)
    again = folder / "same.json"
    again.write_text(json.dumps(same))
    resumed = folder / "resumed.cnnb"
    done = train(again, "--data", data, "--out", resumed, "--resume", out)
    assert done.returncode == 0, done.stderr
    assert f"resuming {resumed} after epoch 1, up to epoch 2" in done.stderr
    assert [record["epoch"] for record in cnntool.load_bundle(resumed).meta["history"]] == [1, 2]


def test_a_different_spec_says_what_differs(checkpoint):
    folder, spec, data, out = checkpoint
    changed = json.loads(spec.read_text())
    changed["layers"][0]["filters"] = 6
    changed["layers"].insert(4, {"type": "dropout", "rate": 0.1})
    other = folder / "other.json"
    other.write_text(json.dumps(changed))
    before = out.read_bytes()
    done = train(other, "--data", data, "--resume", out)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {other} is not the spec {out} was trained from: 5 layers stored, 6 given; "
        "layer 0 'conv2d_1': filters (stored 4, given 6); layer 4 is dense 'dense_1' in the bundle, "
        f"dropout 'dropout_1' in the spec; resume with `cnntool train --resume {out}` alone, or train "
        "the changed spec with a new --out\n"
    )
    assert out.read_bytes() == before
