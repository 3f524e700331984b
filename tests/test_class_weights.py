"""Class weights (Keras's class_weight): each example's loss times its class's weight, the
mean over the batch; in the compiled training step, layer by layer, and from the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnntool
from cnntool.training.run import class_weights

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
SPEC = {"input_shape": [1, 6, 6], "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3},
        {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "units": 3}]}  # fmt: skip


def reference(logits, labels, weights):
    """The weighted mean and its gradient, in float64 numpy."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = weights[labels].astype(np.float64)
    loss = float(np.mean(-np.log(p[np.arange(len(labels)), labels]) * w))
    grad = p.copy()
    grad[np.arange(len(labels)), labels] -= 1
    return loss, grad * (w / len(labels))[:, None]


def test_weighted_loss_matches_the_reference_and_pytorch(rng):
    logits = rng.standard_normal((9, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 9)
    weights = np.array([0.5, 2.0, 3.0], np.float32)
    loss, grad = cnntool.softmax_cross_entropy(logits, labels, class_weights=weights)
    expected_loss, expected_grad = reference(logits, labels, weights)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    torch = pytest.importorskip("torch")
    per_example = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(labels), reduction="none"
    )
    assert loss == pytest.approx(float((per_example * torch.tensor(weights)[labels]).mean()), rel=1e-5)


@pytest.mark.parametrize("fuse", [True, False])
def test_the_training_step_weighs_classes(fuse, rng):
    net = cnntool.Network.from_spec(SPEC, seed=1)
    net.use_plan = fuse
    x = rng.standard_normal((4, 1, 6, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 2], np.int64)
    net.class_weights[:] = [1.0, 4.0, 0.25]
    loss, _ = net.train_step(x, labels)
    weighted = {key: value.copy() for key, value in net.grads().items()}
    expected, _ = reference(net.forward(x), labels, net.class_weights)
    assert loss / 4 == pytest.approx(expected, rel=1e-5)
    net.class_weights[:] = 1.0
    plain_loss, _ = net.train_step(x, labels)
    assert plain_loss != pytest.approx(loss)
    assert not np.allclose(weighted["dense_1.weight"], net.grads()["dense_1.weight"])
    # Evaluation weighs every class alike, whatever the training weights.
    net.class_weights[:] = [1.0, 4.0, 0.25]
    evaluated, _ = net.evaluate_batch(x, labels, np.empty(4, np.int64))
    assert evaluated / 4 == pytest.approx(
        reference(net.forward(x), labels, np.ones(3, np.float32))[0], rel=1e-5
    )


def test_balanced_weights_are_inverse_class_frequencies():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    np.testing.assert_allclose(class_weights("balanced", labels, 3), [12 / 18, 12 / 6, 12 / 12])
    np.testing.assert_allclose(class_weights("balanced", labels, 4), [12 / 24, 12 / 8, 12 / 16, 1.0])
    np.testing.assert_allclose(class_weights(None, labels, 3), [1, 1, 1])
    with pytest.raises(
        cnntool.CnntoolError, match=r"Expected one weight per class \(3\). Received: 2 weights"
    ):
        class_weights([1.0, 2.0], labels, 3)


def test_class_weights_from_the_command_line(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 6, 6)).astype(np.uint8)
    y = np.array([0] * 40 + [1] * 15 + [2] * 5)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    common = [CNNTOOL, "train", tmp_path / "spec.json", "--data", tmp_path / "data.npz", "--epochs", "1",
              "--val-split", "0"]  # fmt: skip
    done = subprocess.run(
        [*common, "--class-weights", "balanced", "--out", tmp_path / "b.cnnb", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert cnntool.load_bundle(tmp_path / "b.cnnb").meta["training"]["class_weights"] == "balanced"
    plain = subprocess.run([*common, "--out", tmp_path / "p.cnnb", "--json"], capture_output=True, text=True)
    assert json.loads(done.stdout)["digest"] != json.loads(plain.stdout)["digest"]
    bad = subprocess.run(
        [*common, "--class-weights", "1,x", "--out", tmp_path / "x.cnnb"], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "error: Invalid value for `--class-weights`. Expected 'balanced' or numbers separated by commas. "
        "Received: '1,x'"
    )
    assert not (tmp_path / "x.cnnb").exists()
