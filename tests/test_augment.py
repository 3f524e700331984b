"""Augmentation: the resampling kernel against a numpy reference, the transforms it is given,
determinism from the seed and the step, and a training run that records it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnntool
from cnntool.kernels.augment import affine_resample
from cnntool.model.spec import TrainingConfig
from cnntool.training.augmentation import Augmenter

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))


def reference_resample(images, transforms, constant, fill):
    """The kernel's definition, written with numpy arrays."""
    n, c, h, w = images.shape
    rows, cols = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    out = np.empty_like(images)
    for k in range(n):
        m00, m01, m10, m11, b0, b1 = transforms[k]
        y = (h - 1) / 2 + m00 * rows + m01 * cols + b0
        x = (w - 1) / 2 + m10 * rows + m11 * cols + b1
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        wy, wx = y - y0, x - x0
        total = np.zeros((c, h, w))
        for dy, weight_y in ((0, 1 - wy), (1, wy)):
            for dx, weight_x in ((0, 1 - wx), (1, wx)):
                row, col = y0 + dy, x0 + dx
                inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
                value = images[k][:, np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)]
                if constant:
                    value = np.where(inside, value, fill)
                total += np.where((weight_y * weight_x) > 0, weight_y * weight_x * value, 0)
        out[k] = total
    return out


@pytest.mark.parametrize("constant", [False, True])
def test_kernel_matches_the_numpy_reference(rng, constant):
    images = rng.random((5, 2, 7, 9), dtype=np.float32)
    angles = rng.uniform(-0.5, 0.5, 5)
    transforms = np.stack(
        [np.cos(angles), np.sin(angles), -np.sin(angles), np.cos(angles), *rng.uniform(-3, 3, (2, 5))], axis=1
    )
    out = np.empty_like(images)
    affine_resample(images, transforms, constant, -0.5, out)
    np.testing.assert_allclose(out, reference_resample(images, transforms, constant, -0.5), atol=1e-6)


def test_flips_and_whole_pixel_shifts_move_pixels_exactly(rng):
    images = rng.random((1, 1, 6, 6), dtype=np.float32)
    out = np.empty_like(images)
    affine_resample(images, np.array([[1.0, 0, 0, -1, 0, 0]]), False, 0.0, out)
    np.testing.assert_array_equal(out, images[..., ::-1])
    affine_resample(images, np.array([[1.0, 0, 0, 1, -2, 1]]), True, 7.0, out)  # content down 2, left 1
    np.testing.assert_array_equal(out[0, 0, 2:, :5], images[0, 0, :4, 1:])
    assert (out[0, 0, :2] == 7.0).all() and (out[0, 0, :, 5] == 7.0).all()


def test_draws_depend_on_seed_and_step_only(rng):
    settings = TrainingConfig(augment_shift=2, augment_crop_padding=2, augment_flip=True, augment_rotation=10)
    x = rng.random((8, 1, 12, 12), dtype=np.float32)
    first = Augmenter(settings, seed=3)(x, step=5).copy()
    np.testing.assert_array_equal(Augmenter(settings, seed=3)(x, step=5), first)
    assert not np.array_equal(Augmenter(settings, seed=3)(x, step=6), first)
    assert not np.array_equal(Augmenter(settings, seed=4)(x, step=5), first)
    assert not Augmenter(TrainingConfig(), seed=3).active


def test_training_with_augmentation_records_it_and_is_reproducible(tmp_path):
    sample = cnntool.load_dataset("mnist-sample")
    data = tmp_path / "digits.npz"
    np.savez(data, x_train=sample.x_train[:300], y_train=sample.y_train[:300],
             x_test=sample.x_test[:50], y_test=sample.y_test[:50])  # fmt: skip
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "name": "augmented", "input_shape": [1, 28, 28],
        "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "relu"},
                   {"type": "maxpool2d"}, {"type": "flatten"}, {"type": "dense", "units": 10}],
        "training": {"augment_rotation": 10},
    }))  # fmt: skip
    digests = []
    # The first run may compile the network's plan; it must still end with the same weights.
    for name in ("compiling", "a", "b", "plain"):
        options = ["--augment-shift", "2", "--augment-crop-padding", "1"] if name != "plain" else []
        out = tmp_path / f"{name}.cnnb"
        done = subprocess.run(
            [CNNTOOL, "train", spec, "--data", data, "--out", out, "--epochs", "1", *options, "--json"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        digests.append(json.loads(done.stdout)["digest"])
    training = cnntool.load_bundle(tmp_path / "a.cnnb").meta["training"]
    assert {key: value for key, value in training.items() if key.startswith("augment")} == {
        "augment_shift": 2, "augment_crop_padding": 1, "augment_flip": False, "augment_rotation": 10.0,
    }  # fmt: skip
    assert digests[0] == digests[1] == digests[2] != digests[3]
