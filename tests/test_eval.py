"""`cnntool eval` and the metrics behind it, on datasets of shapes nobody chose in advance."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app
from cnntool.cli.evaluate import format_report
from cnntool.data import preprocess
from cnntool.errors import DataError
from cnntool.inference.metrics import (
    averages,
    check_dataset_fits,
    confusion_matrix,
    per_class,
    top_confusions,
)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# Metrics against plain loops


def reference_scores(labels, predictions, classes):
    """Precision, recall, F1 per class, counted example by example."""
    rows = []
    for k in range(classes):
        true_positive = sum(1 for y, p in zip(labels, predictions, strict=True) if y == k and p == k)
        predicted = sum(1 for p in predictions if p == k)
        actual = sum(1 for y in labels if y == k)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((precision, recall, f1, actual))
    return rows


def test_metrics_match_counting_by_hand():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 400)
    predictions = np.where(rng.random(400) < 0.7, labels, rng.integers(0, 6, 400))
    predictions[predictions == 5] = 4  # class 4 over-predicted
    labels[labels == 3] = 2  # class 3 never occurs: support 0

    matrix = confusion_matrix(labels, predictions, 5)
    rows = per_class(matrix)

    for k in range(5):
        for j in range(5):
            assert matrix[k, j] == np.sum((labels == k) & (predictions == j))
    expected = reference_scores(labels.tolist(), predictions.tolist(), 5)
    for row, (precision, recall, f1, support) in zip(rows, expected, strict=True):
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    assert rows[3]["support"] == 0 and rows[3]["recall"] == 0.0
    present = [r for r in expected if r[3]]
    average = averages(rows)
    assert average["macro"]["f1"] == pytest.approx(np.mean([r[2] for r in present]))
    assert average["weighted"]["recall"] == pytest.approx(
        sum(r[1] * r[3] for r in present) / sum(r[3] for r in present)
    )
    # Weighted recall is accuracy.
    assert average["weighted"]["recall"] == pytest.approx(np.mean(labels == predictions))


def test_top_confusions_are_the_largest_off_diagonal_counts():
    matrix = np.array([[50, 7, 0], [2, 40, 9], [0, 9, 30]])
    mistakes = top_confusions(matrix, ["a", "b", "c"], count=3)
    assert mistakes == [
        {"true": "b", "predicted": "c", "count": 9, "share_of_true": 9 / 51},
        {"true": "c", "predicted": "b", "count": 9, "share_of_true": 9 / 39},
        {"true": "a", "predicted": "b", "count": 7, "share_of_true": 7 / 57},
    ]
    assert top_confusions(np.diag([3, 4]), ["a", "b"]) == []


class Fake:
    def __init__(self, **fields):
        self.__dict__.update(fields)


@pytest.mark.parametrize(
    ("net", "data", "message"),
    [
        (
            {"input_shape": (1, 28, 28), "classes": ["0", "1"]},
            {"input_shape": (3, 28, 28), "classes": ["0", "1"]},
            r"the images of set have shape \[3, 28, 28\] \(C, H, W\) but the model takes \[1, 28, 28\]",
        ),
        (
            {"input_shape": (1, 4, 4), "classes": ["0", "1"]},
            {"input_shape": (1, 4, 4), "classes": ["0", "1", "2"]},
            r"set has 3 classes but the model has 2 \(0, 1\)",
        ),
        (
            {"input_shape": (1, 4, 4), "classes": ["cat", "dog"]},
            {"input_shape": (1, 4, 4), "classes": ["cat", "bird"], "named_classes": True},
            r"set names its classes cat, bird but the model's are cat, dog",
        ),
        (
            {"input_shape": (1, 4, 4), "classes": ["0", "1", "2"]},
            {"input_shape": (1, 4, 4), "classes": ["cat", "dog"], "named_classes": True},
            r"set names its classes cat, dog but the model's are 0, 1, 2",
        ),
    ],
)
def test_dataset_must_fit_the_model(net, data, message):
    with pytest.raises(DataError, match=message):
        check_dataset_fits(Fake(**net), Fake(name="set", **data))


def test_data_without_class_names_fits_any_names():
    check_dataset_fits(
        Fake(input_shape=(1, 4, 4), classes=["cat", "dog", "bird"]),
        Fake(name="set", input_shape=(1, 4, 4), classes=["0", "1"], named_classes=False),
    )


# Train and evaluate datasets of other shapes, sizes and class counts


def prototypes_dataset(classes: int, shape: tuple, train_per_class: int, test_per_class: int, seed: int):
    """Each class is a random prototype image; examples are noisy copies of it (uint8)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (classes, *shape))

    def draw(per_class):
        labels = np.repeat(np.arange(classes), per_class)
        noise = rng.normal(0, 25, (len(labels), *shape))
        return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    return x_train, y_train, x_test, y_test


def write_spec(path: Path, input_shape, layers, **training) -> Path:
    spec = {
        "name": path.stem,
        "input_shape": list(input_shape),
        "layers": layers,
        "training": {"epochs": 4, "batch_size": 16, "optimizer": "adam", "lr": 0.003, **training},
    }
    path.write_text(json.dumps(spec))
    return path


def train_and_eval(spec: Path, data: Path, out: Path) -> tuple[dict, dict]:
    trained = invoke("train", spec, "--data", data, "--out", out, "--json")
    assert trained.exit_code == 0, trained.output
    evaluated = invoke("eval", out, "--data", data, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    return json.loads(trained.stdout), json.loads(evaluated.stdout)


def check_against_the_network(report: dict, out: Path, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """The report's numbers, recomputed from the bundle's own predictions."""
    bundle = cnntool.load_bundle(out)
    probabilities = bundle.network.predict_proba(preprocess(x_test, bundle.preprocessing))
    predictions = probabilities.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(np.mean(predictions == y_test))
    losses = -np.log(probabilities[np.arange(len(y_test)), y_test])
    assert report["loss"] == pytest.approx(losses.mean(), rel=1e-4)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == len(y_test)
    np.testing.assert_array_equal(matrix.sum(axis=1)[: y_test.max() + 1], np.bincount(y_test))
    assert np.trace(matrix) == np.sum(predictions == y_test)


def test_colour_32x32_with_100_classes_from_npz(tmp_path):
    x_train, y_train, x_test, y_test = prototypes_dataset(100, (3, 32, 32), 6, 2, seed=1)
    names = np.array([f"kind {k:02d}" for k in range(100)])
    data = tmp_path / "hundred.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=names)
    spec = write_spec(
        tmp_path / "wide.json",
        (3, 32, 32),
        [
            {"type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 100},
        ],
        val_split=0.0,
    )

    trained, report = train_and_eval(spec, data, tmp_path / "wide.cnnb")

    assert report["classes"] == names.tolist()
    assert report["examples"] == 200
    assert len(report["per_class"]) == 100
    assert report["accuracy"] == pytest.approx(trained["test"]["accuracy"])
    assert report["accuracy"] > 0.9
    check_against_the_network(report, tmp_path / "wide.cnnb", x_test, y_test)
    text = format_report(report)
    assert "confusion matrix: 100 x 100, printed with --json" in text
    assert "kind 42" in text


def test_non_square_images_from_idx_files(tmp_path):
    x_train, y_train, x_test, y_test = prototypes_dataset(3, (20, 12), 40, 10, seed=2)
    folder = tmp_path / "tall"
    folder.mkdir()
    for stem, array in (
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train.astype(np.uint8)),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test.astype(np.uint8)),
    ):
        header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    spec = write_spec(
        tmp_path / "tall.json",
        (1, 20, 12),
        [
            {"type": "conv2d", "filters": 4, "kernel_size": 3},
            {"type": "relu"},
            {"type": "maxpool2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
    )

    _, report = train_and_eval(spec, folder, tmp_path / "tall.cnnb")

    assert report["dataset"] == str(folder)
    assert report["accuracy"] == 1.0
    check_against_the_network(report, tmp_path / "tall.cnnb", x_test[:, np.newaxis], y_test)
    meta = cnntool.load_bundle(tmp_path / "tall.cnnb").meta["dataset"]
    assert meta["input_shape"] == [1, 20, 12]
    assert [f["name"] for f in meta["files"]] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert (meta["train_size"], meta["test_size"]) == (120, 30)


def stripes(kind: str, rng) -> np.ndarray:
    """A 16x12 RGB picture: horizontal or vertical stripes, or a checkerboard, in a random colour."""
    rows, cols = np.indices((12, 16))
    pattern = {"horizontal": rows // 2 % 2, "vertical": cols // 2 % 2, "checker": (rows // 2 + cols // 2) % 2}
    colour = rng.integers(80, 256, 3)
    pixels = pattern[kind][..., np.newaxis] * colour + rng.normal(0, 10, (12, 16, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_folder_of_pictures_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "patterns"
    for kind in ("horizontal", "vertical", "checker"):
        (root / kind).mkdir(parents=True)
        for index in range(25):
            Image.fromarray(stripes(kind, rng)).save(root / kind / f"{index}.png")
    spec = write_spec(
        tmp_path / "patterns.json",
        (3, 12, 16),
        [
            {"type": "conv2d", "filters": 6, "kernel_size": 3},
            {"type": "relu"},
            {"type": "maxpool2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
        epochs=6,
    )

    _, report = train_and_eval(spec, root, tmp_path / "patterns.cnnb")

    assert report["classes"] == ["checker", "horizontal", "vertical"]
    assert report["examples"] == 15
    assert report["accuracy"] >= 0.9
    dataset = cnntool.load_dataset(root)
    check_against_the_network(report, tmp_path / "patterns.cnnb", dataset.x_test, dataset.y_test)
    meta = cnntool.load_bundle(tmp_path / "patterns.cnnb").meta["dataset"]
    assert meta["images"] == {
        "mode": "RGB",
        "size": [16, 12],
        "resized": 0,
        "split": "20% of each class held out (seed 0)",
    }
    assert meta["files"][0]["images"] == 75


# The command


@pytest.fixture(scope="module")
def sample_bundle(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("eval") / "seed.cnnb"
    result = invoke(
        "train", root / "models/seed_cnn.json", "--data", "mnist-sample", "--epochs", "1", "--out", out
    )
    assert result.exit_code == 0, result.output
    return out


def test_eval_defaults_to_the_named_dataset_of_the_bundle(sample_bundle):
    result = invoke("eval", sample_bundle, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "mnist-sample"
    assert report["source"] == "bundled"
    assert report["preprocessing"] == {
        "pixel_scale": 1 / 255,
        "mean": 0.0,
        "std": 1.0,
        "image_fit": "mnist",
        "background": "dark",
    }
    sample = cnntool.load_dataset("mnist-sample")
    check_against_the_network(report, sample_bundle, sample.x_test, sample.y_test)
    assert [row["support"] for row in report["per_class"]] == [100] * 10
    assert [row["class"] for row in report["per_class"]] == [str(d) for d in range(10)]


def test_eval_text_report(sample_bundle):
    report = json.loads(invoke("eval", sample_bundle, "--json").stdout)
    result = invoke("eval", sample_bundle)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "mnist-sample: test split, 1000 examples"
    assert lines[1] == f"loss {report['loss']:.4f}  accuracy {report['accuracy']:.4f}"
    assert lines[3].split() == ["class", "precision", "recall", "f1", "support"]
    row = report["per_class"][7]
    assert lines[4 + 7].split() == [
        "7",
        f"{row['precision']:.4f}",
        f"{row['recall']:.4f}",
        f"{row['f1']:.4f}",
        "100",
    ]
    assert lines[14].split()[:2] == ["macro", "avg"]
    assert lines[17] == "confusion matrix (rows: true class, columns: predicted class by index)"
    assert lines[18].split() == [str(d) for d in range(10)]
    assert [int(v) for v in lines[19].split()] == [0, *report["confusion_matrix"][0]]
    top = report["top_confusions"][0]
    assert lines[30] == "most frequent mistakes (true -> predicted)"
    assert lines[31] == (
        f"  {top['true']} -> {top['predicted']}: {top['count']} ({top['share_of_true']:.1%} of {top['true']})"
    )


def test_eval_without_data_for_a_bundle_of_a_file_dataset(tmp_path):
    x_train, y_train, x_test, y_test = prototypes_dataset(2, (4, 4), 10, 3, seed=5)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    spec = write_spec(
        tmp_path / "tiny.json", (1, 4, 4), [{"type": "flatten"}, {"type": "dense", "units": 2}], epochs=1
    )
    assert invoke("train", spec, "--data", data, "--out", tmp_path / "tiny.cnnb").exit_code == 0
    # The recorded path is used while it is there (#18: eval refused it) ...
    result = invoke("eval", tmp_path / "tiny.cnnb", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == str(data)
    # ... and named when it is gone.
    data.rename(tmp_path / "moved.npz")
    result = invoke("eval", tmp_path / "tiny.cnnb")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'tiny.cnnb'}: trained on {data}, which is not a named dataset "
        f"(mnist-sample, mnist, fashion-mnist) and {data} is not there any more; pass --data with where "
        "it is now"
    )


def test_eval_refuses_data_of_another_shape(sample_bundle, tmp_path):
    x_train, y_train, x_test, y_test = prototypes_dataset(2, (3, 28, 28), 4, 2, seed=6)
    np.savez(tmp_path / "rgb.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    result = invoke("eval", sample_bundle, "--data", tmp_path / "rgb.npz")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: the images of {tmp_path / 'rgb.npz'} have shape [3, 28, 28] (C, H, W) but the model "
        "takes [1, 28, 28]; evaluate on data like the data it was trained on"
    )
