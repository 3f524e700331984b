"""The command line, through Typer's runner and through the installed `cnntool` script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app

runner = CliRunner()
CNNTOOL = str(Path(sys.executable).with_name("cnntool"))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run(*args, env=None):
    return subprocess.run(
        [CNNTOOL, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, root):
    """The seed network trained 3 epochs on the bundled sample by the installed command."""
    out = tmp_path_factory.mktemp("train") / "seed.cnnb"
    result = run(
        "train",
        root / "models/seed_cnn.json",
        "--data",
        "mnist-sample",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--out",
        out,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result


def test_train_reaches_90_percent_and_reports_history(trained):
    path, report, result = trained
    assert path.is_file()
    assert [r["epoch"] for r in report["history"]] == [1, 2, 3]
    for record in report["history"]:
        assert set(record) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
        assert record["seconds"] > 0
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["test"]["accuracy"] >= 0.90, report["test"]
    assert report["test"]["examples"] == 1000
    # Without a terminal, progress is one plain line per epoch on stderr.
    assert result.stderr.count("epoch ") == 3
    assert "val_accuracy" in result.stderr


def test_bundle_records_history_preprocessing_and_dataset(trained):
    path, report, _ = trained
    bundle = cnntool.load_bundle(path)
    assert bundle.meta["history"] == report["history"]
    assert bundle.meta["preprocessing"] == {
        "pixel_scale": 1 / 255,
        "mean": 0.0,
        "std": 1.0,
        "image_fit": "mnist",
        "background": "dark",
    }
    assert bundle.meta["dataset"]["name"] == "mnist-sample"
    assert bundle.meta["seed"] == 1
    assert bundle.meta["training"]["epochs"] == 3
    assert bundle.digest == report["digest"]
    sample = cnntool.load_dataset("mnist-sample")
    scores = cnntool.evaluate(bundle.network, sample.x_test, sample.y_test, bundle.preprocessing)
    assert scores["accuracy"] == pytest.approx(report["test"]["accuracy"])


def test_same_seed_gives_same_weights(trained, tmp_path, root):
    report = trained[1]
    again = tmp_path / "again.cnnb"
    result = invoke(
        "train",
        root / "models/seed_cnn.json",
        "--data",
        "mnist-sample",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--out",
        again,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["digest"] == report["digest"]
    other = invoke(
        "train",
        root / "models/seed_cnn.json",
        "--data",
        "mnist-sample",
        "--epochs",
        "1",
        "--seed",
        "2",
        "--out",
        tmp_path / "other.cnnb",
        "--json",
    )
    assert json.loads(other.stdout)["digest"] != report["digest"]


def test_inspect_bundle_and_spec(trained, root):
    path, report, _ = trained
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "bundle" and info["runnable"]
    assert info["total_params"] == 5258
    assert [row["output_shape"] for row in info["layers"]][-1] == [10]
    assert info["layers"][0]["flops"] == 2 * 8 * 26 * 26 * 9 + 8 * 26 * 26
    assert info["providers"]["conv2d"] == f"cnntool=={cnntool.__version__}"
    assert info["history"] == report["history"]
    text = invoke("inspect", path)
    assert text.exit_code == 0
    assert "conv2d_1" in text.stdout and "5,258" in text.stdout and "history" in text.stdout
    spec = invoke("inspect", root / "models/mnist_cnn.json", "--json")
    info = json.loads(spec.stdout)
    assert info["kind"] == "spec"
    expected = 32 * 9 + 32 + 64 * 32 * 9 + 64 + 128 * 64 * 12 * 12 + 128 + 10 * 128 + 10
    assert info["total_params"] == expected


def test_infer_images_and_arrays(trained, root, tmp_path):
    path, _, _ = trained
    digits = root / "models" / "digits"
    sample = cnntool.load_dataset("mnist-sample")
    np.save(tmp_path / "batch.npy", sample.x_test[[2, 7, 9]])
    np.save(tmp_path / "one.npy", sample.x_test[3, 0].astype(np.float32) / 255)
    result = run(
        "infer",
        path,
        digits / "digit_2.png",
        digits / "photo_7.png",
        tmp_path / "batch.npy",
        tmp_path / "one.npy",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["input"] for r in records] == [
        str(digits / "digit_2.png"),
        str(digits / "photo_7.png"),
        *[str(tmp_path / "batch.npy")] * 3,
        str(tmp_path / "one.npy"),
    ]
    assert [r["label"] for r in records] == ["2", "7", "2", "7", "9", "3"]
    assert [r.get("item") for r in records] == [None, None, 0, 1, 2, 0]
    for record in records:
        assert len(record["probabilities"]) == 10
        assert sum(record["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert record["index"] == int(np.argmax(record["probabilities"]))
    text = invoke("infer", path, digits / "digit_9.png", "--top-k", "2")
    assert text.exit_code == 0
    assert text.stdout.startswith(f"{digits / 'digit_9.png'}: 9 (")
    assert text.stdout.count("(") == 2


def test_eval_reports_confusion_matrix(trained):
    path, report, _ = trained
    result = invoke("eval", path, "--data", "mnist-sample", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    matrix = np.array(data["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 1000
    assert (
        np.trace(matrix) / 1000
        == pytest.approx(data["accuracy"])
        == pytest.approx(report["test"]["accuracy"])
    )
    assert [row["support"] for row in data["per_class"]] == [100] * 10


def test_layers_and_schema():
    result = invoke("layers", "--json")
    rows = {row["type"]: row for row in json.loads(result.stdout)}
    assert {"conv2d", "dense", "maxpool2d", "relu", "flatten", "softmax"} <= set(rows)
    assert rows["conv2d"]["distribution"] == "cnntool" and rows["conv2d"]["status"] == "ok"
    schema = json.loads(invoke("schema").stdout)
    assert schema["title"] == "NetworkSpec"
    assert "conv2d" in schema["properties"]["layers"]["items"]["discriminator"]["mapping"]


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing spec",
        "bad json",
        "invalid spec",
        "bad bundle",
        "bad input",
        "missing input",
        "unknown data",
        "wrong data shape",
        "missing folder",
    ],
)
def test_user_errors_are_one_line_without_traceback(case, trained, tmp_path, root):
    bundle = trained[0]
    spec = root / "models/seed_cnn.json"
    args, expected = {
        "missing spec": (
            ["train", tmp_path / "nope.json", "--data", "mnist-sample", "--out", tmp_path / "o.cnnb"],
            "nope.json: spec file not found",
        ),
        "bad json": (["inspect", write(tmp_path / "bad.json", '{"layers": [')], "invalid JSON at line 1"),
        "invalid spec": (
            [
                "inspect",
                write(
                    tmp_path / "s.json",
                    json.dumps(
                        {
                            "input_shape": [1, 8, 8],
                            "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 9}],
                        }
                    ),
                ),
            ],
            "layer 0 'conv2d_1' (conv2d): kernel_size 9x9 is larger than its input 8x8",
        ),
        "bad bundle": (
            ["infer", write(tmp_path / "b.cnnb", "garbage"), spec],
            "b.cnnb: not a cnntool bundle",
        ),
        "bad input": (["infer", bundle, write(tmp_path / "x.png", "not an image")], "x.png: "),
        "missing input": (["infer", bundle, tmp_path / "none.png"], "none.png: file not found"),
        "unknown data": (["train", spec, "--data", "nowhere", "--out", tmp_path / "o.cnnb"], "nowhere"),
        "wrong data shape": (
            ["train", spec, "--data", npz(tmp_path, (2, 16, 16)), "--out", tmp_path / "o.cnnb"],
            "input_shape [1, 28, 28] does not match the dataset's images [2, 16, 16]",
        ),
        "missing folder": (
            ["train", spec, "--data", "mnist-sample", "--out", tmp_path / "no" / "o.cnnb"],
            "folder " + str(tmp_path / "no") + " does not exist",
        ),
    }[case]
    result = run(*args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "o.cnnb").exists()


def npz(tmp_path, image_shape):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 255, (20, *image_shape), dtype=np.uint8),
        y_train=np.arange(20) % 3,
        x_test=rng.integers(0, 255, (6, *image_shape), dtype=np.uint8),
        y_test=np.arange(6) % 3,
    )
    return path


def test_bad_option_exits_2_and_debug_shows_traceback(tmp_path):
    result = run("train", "models/seed_cnn.json", "--epochs", "zero", "--out", tmp_path / "o.cnnb")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--epochs" in result.stderr
    missing = tmp_path / "nope.cnnb"
    quiet = run("inspect", missing)
    loud = run("inspect", missing, "--debug")
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "CnntoolError" in loud.stderr


def test_help_and_version():
    assert run("--help").returncode == 0
    version = run("--version")
    assert version.stdout.strip() == f"cnntool {cnntool.__version__}"
    for command in ("train", "inspect", "infer", "eval", "layers", "schema"):
        assert invoke(command, "--help").exit_code == 0


def test_python_m_cnntool():
    result = subprocess.run([sys.executable, "-m", "cnntool", "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == f"cnntool {cnntool.__version__}"


def test_training_on_npz_with_other_shape(tmp_path):
    spec = write(
        tmp_path / "small.json",
        json.dumps(
            {
                "input_shape": [2, 16, 16],
                "layers": [
                    {"type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2, "padding": "same"},
                    {"type": "relu"},
                    {"type": "flatten"},
                    {"type": "dense", "units": 3},
                ],
            }
        ),
    )
    result = invoke(
        "train",
        spec,
        "--data",
        npz(tmp_path, (2, 16, 16)),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--optimizer",
        "adam",
        "--out",
        tmp_path / "s.cnnb",
        "--json",
    )
    assert result.exit_code == 0, result.output
    bundle = cnntool.load_bundle(tmp_path / "s.cnnb")
    assert bundle.network.classes == ["0", "1", "2"]
    assert bundle.optimizer["type"] == "adam"
    assert len(json.loads(result.stdout)["history"]) == 2
