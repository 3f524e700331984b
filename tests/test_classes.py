"""Class names are never lost silently: a spec naming other classes than its data is refused
(with both lists) unless --classes-from-data takes the data's, and `eval` refuses data whose
class names are not the model's, numbers or not."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cnntool
from pictures import picture_folder

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
CLASSES = {0: "T-shirt", 1: "Trouser", 8: "Bag"}
SPEC = {
    "name": "clothes",
    "input_shape": [1, 28, 28],
    "classes": ["0", "1", "2"],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d"},
        {"type": "flatten"},
        {"type": "dense", "units": 3},
    ],
}


def cnntool_cli(*args):
    return subprocess.run([CNNTOOL, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    spec = root / "spec.json"
    spec.write_text(json.dumps(SPEC))
    return spec, picture_folder(root / "clothes", CLASSES, 10)


def test_a_spec_naming_other_classes_is_refused_with_both_lists(folder):
    spec, pictures = folder
    out = pictures.parent / "refused.cnnb"
    done = cnntool_cli("train", spec, "--data", pictures, "--out", out, "--epochs", 1)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: the spec's classes (0, 1, 2) are not the classes of {pictures} (Bag, T-shirt, Trouser); "
        'remove "classes" from the spec or pass --classes-from-data to take the dataset\'s, or fix the '
        "spec's list\n"
    )
    assert not out.exists()


def test_classes_from_data_names_the_outputs_after_the_folders(folder):
    spec, pictures = folder
    out = pictures.parent / "named.cnnb"
    done = cnntool_cli("train", spec, "--data", pictures, "--out", out, "--epochs", 1, "--classes-from-data")
    assert done.returncode == 0, done.stderr
    assert cnntool.load_bundle(out).network.classes == ["Bag", "T-shirt", "Trouser"]


def test_eval_compares_class_names_even_when_the_model_has_numbers(tmp_path):
    """A digit model (classes "0"-"9") evaluated on Fashion-MNIST ran and reported a score."""
    spec = dict(SPEC, classes=None, layers=[*SPEC["layers"][:-1], {"type": "dense", "units": 10}])
    spec_path = tmp_path / "digits.json"
    spec_path.write_text(json.dumps({key: value for key, value in spec.items() if value is not None}))
    out = tmp_path / "digits.cnnb"
    assert (
        cnntool_cli("train", spec_path, "--data", "mnist-sample", "--out", out, "--epochs", 1).returncode == 0
    )
    done = cnntool_cli("eval", out, "--data", "fashion-mnist")
    assert done.returncode == 1
    assert done.stderr == (
        "error: fashion-mnist names its classes T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, "
        "Sneaker, Bag, Ankle boot but the model's are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; the model was trained "
        "on other classes\n"
    )
    assert cnntool_cli("eval", out, "--data", "mnist-sample").returncode == 0
