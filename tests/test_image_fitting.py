"""Images that kept their content only by luck: transparency composited by what the model was
trained on, and the same fitting at every size (#18 defect 3)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnntool
from cnntool.data import load_image

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
MNIST = (1, 28, 28)
DIGITS = 12  # the first test digits of the bundled sample


@pytest.fixture(scope="module")
def digits():
    sample = cnntool.load_dataset("mnist-sample")
    return sample.x_test[:DIGITS, 0], sample.y_test[:DIGITS]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small digit model trained for two epochs on the bundled sample."""
    folder = tmp_path_factory.mktemp("fitting")
    spec = folder / "spec.json"
    spec.write_text(json.dumps({
        "name": "digits", "input_shape": [1, 28, 28],
        "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "relu"},
                   {"type": "maxpool2d"}, {"type": "flatten"}, {"type": "dense", "units": 10}],
    }))  # fmt: skip
    out = folder / "digits.cnnb"
    done = subprocess.run(
        [CNNTOOL, "train", spec, "--data", "mnist-sample", "--epochs", "2", "--out", out],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def infer(bundle, paths):
    done = subprocess.run(
        [CNNTOOL, "infer", bundle, *paths, "--json"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return [record["index"] for record in json.loads(done.stdout)], done.stderr


def test_the_bundle_records_the_training_background(bundle):
    assert cnntool.load_bundle(bundle).preprocessing["background"] == "dark"


def test_white_on_transparent_digits_keep_their_ink(bundle, digits, tmp_path):
    """Alpha flattened onto white made a white digit on a transparent canvas a blank page."""
    pixels, _ = digits
    plain, transparent = [], []
    for index, digit in enumerate(pixels):
        plain.append(tmp_path / f"plain_{index}.png")
        Image.fromarray(digit).save(plain[-1])
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = digit
        transparent.append(tmp_path / f"transparent_{index}.png")
        Image.fromarray(rgba, "RGBA").save(transparent[-1])
    np.testing.assert_array_equal(load_image(transparent[0], MNIST)[0], pixels[0])
    assert infer(bundle, transparent)[0] == infer(bundle, plain)[0]


def test_a_dark_on_white_digit_of_the_model_size_is_fitted_like_a_larger_one(bundle, digits, tmp_path):
    pixels, labels = digits
    small, large, plain = [], [], []
    for index, digit in enumerate(pixels):
        plain.append(tmp_path / f"plain_{index}.png")
        Image.fromarray(digit).save(plain[-1])
        small.append(tmp_path / f"dark_on_white_{index}.png")
        Image.fromarray(255 - digit).save(small[-1])
        large.append(tmp_path / f"dark_on_white_56_{index}.png")
        Image.fromarray(255 - digit).resize((56, 56), Image.Resampling.LANCZOS).save(large[-1])
    # Inverted back, pixel for pixel: the contrast of these digits already spans 0-255.
    np.testing.assert_array_equal(load_image(small[0], MNIST)[0], pixels[0])
    expected = infer(bundle, plain)[0]
    assert infer(bundle, small)[0] == expected
    assert np.mean(np.array(infer(bundle, large)[0]) == labels) >= 0.75


def test_digits_already_framed_like_mnist_keep_their_pixels(digits, tmp_path):
    pixels, _ = digits
    for index, digit in enumerate(pixels):
        path = tmp_path / f"{index}.png"
        Image.fromarray(digit).save(path)
        np.testing.assert_array_equal(load_image(path, MNIST)[0], digit)


def test_a_one_pixel_image_warns(bundle, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1), 200).save(path)
    _, stderr = infer(bundle, [path])
    assert (
        stderr == f"warning: {path}: a 1x1 image holds no picture; the model sees one uniform 28x28 frame\n"
    )
