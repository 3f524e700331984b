"""`cnntool infer` over many inputs: folders, arrays, IDX files, error rows, --out files, and
the one rule for input values that the server shares."""

import csv
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app
from cnntool.data import load_input_file, preprocess

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, seed_spec_path):
    """The seed network with its initial weights: predictions that depend on every input."""
    path = tmp_path_factory.mktemp("bundle") / "seed.cnnb"
    cnntool.save_bundle(cnntool.Network.from_spec(seed_spec_path, seed=3), path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of images with a sub-folder and one broken file, and arrays of each kind."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    folder = root / "held-out"
    (folder / "sub" / "deeper").mkdir(parents=True)
    names = ["a.png", "b.png", "sub/c.png", "sub/deeper/d.png", "sub/e.png"]
    for name, image in zip(names, pixels, strict=False):
        Image.fromarray(image).save(folder / name)
    (folder / "sub" / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image, so not an input")
    np.save(root / "batch.npy", pixels[5:8])
    np.save(root / "floats.npy", pixels[8:10].astype(np.float32) / 255)
    np.savez(root / "set.npz", x_test=pixels[10:12], y_test=np.zeros(2, np.uint8))
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as file:
        file.write(b"\0\0\x08\x03" + np.array([12, 28, 28], ">u4").tobytes() + pixels.tobytes())
    return {"root": root, "folder": folder, "pixels": pixels}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_probabilities(bundle_path, pixels):
    loaded = cnntool.load_bundle(bundle_path)
    return loaded.network.predict_proba(preprocess(pixels[:, np.newaxis], loaded.preprocessing))


def test_folder_is_read_recursively_and_every_readable_input_predicted(bundle, inputs, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = invoke("infer", bundle, inputs["folder"], "--out", out, "--batch-size", "2")
    assert result.exit_code == 1, result.output
    rows = read_jsonl(out)
    folder = inputs["folder"]
    order = ["a.png", "b.png", "sub/broken.png", "sub/c.png", "sub/deeper/d.png", "sub/e.png"]
    assert [row["input"] for row in rows] == [str(folder / name) for name in order]
    broken = rows.pop(2)
    assert broken["error"].startswith(f"{folder / 'sub' / 'broken.png'}: not an image")
    assert broken["label"] is None and broken["probabilities"] is None
    # Each picture as cnntool reads one (fitted MNIST-style, as the bundle records).
    shape = cnntool.load_bundle(bundle).network.input_shape
    fitted = np.concatenate(
        [load_input_file(folder / name, shape)[:, 0] for name in order if "broken" not in name]
    )
    expected = expected_probabilities(bundle, fitted)
    for row, probabilities in zip(rows, expected, strict=True):
        assert row["error"] is None and row["item"] is None
        np.testing.assert_allclose(row["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
        assert row["index"] == int(np.argmax(probabilities))
        assert row["label"] == str(row["index"])
        assert row["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert f"error: {broken['error']}" in result.stderr.splitlines()
    assert "wrote 6 rows" in result.stderr and "1 of them errors" in result.stderr


def test_arrays_and_idx_give_one_row_per_example_with_its_index(bundle, inputs, tmp_path):
    root, pixels = inputs["root"], inputs["pixels"]
    out = tmp_path / "rows.jsonl"
    sources = ["batch.npy", "floats.npy", "set.npz", "t10k-images-idx3-ubyte.gz"]
    result = invoke("infer", bundle, *(root / name for name in sources), "--out", out, "--batch-size", "5")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    counts = [3, 2, 2, 12]
    assert [(row["input"], row["item"]) for row in rows] == [
        (str(root / name), item) for name, count in zip(sources, counts, strict=True) for item in range(count)
    ]
    expected = expected_probabilities(bundle, pixels[[5, 6, 7, 8, 9, 10, 11, *range(12)]])
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected, rtol=1e-5, atol=1e-6)


def test_an_unreadable_array_cut_into_pieces_is_one_error_row(bundle, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((600, 27, 27), np.uint8))
    out = tmp_path / "rows.jsonl"
    result = invoke("infer", bundle, tmp_path / "wrong.npy", "--out", out, "--batch-size", "256")
    assert result.exit_code == 1
    [row] = read_jsonl(out)
    assert (
        row["error"] == f"{tmp_path / 'wrong.npy'}: array has shape (600, 27, 27); expected (1, 28, 28) or "
        "(N, 1, 28, 28) or (28, 28) or (N, 28, 28)"
    )


def test_csv_and_parquet_hold_the_same_rows(bundle, inputs, tmp_path):
    args = ["infer", bundle, inputs["folder"], inputs["root"] / "batch.npy", "--out"]
    invoke(*args, tmp_path / "rows.jsonl")
    assert invoke(*args, tmp_path / "rows.csv").exit_code == 1
    assert invoke(*args, tmp_path / "rows.parquet").exit_code == 1
    rows = read_jsonl(tmp_path / "rows.jsonl")
    with open(tmp_path / "rows.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == ["input", "item", "index", "label", "probability"] + [
        f"p_{i}" for i in range(10)
    ] + ["error"]
    assert [r["input"] for r in table] == [r["input"] for r in rows]
    assert [r["label"] or None for r in table] == [r["label"] for r in rows]
    assert [r["error"] or None for r in table] == [r["error"] for r in rows]
    for line, row in zip(table, rows, strict=True):
        if row["probabilities"] is not None:
            assert [float(line[f"p_{i}"]) for i in range(10)] == row["probabilities"]
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    assert pyarrow_parquet.read_table(tmp_path / "rows.parquet").to_pylist() == rows


def test_strict_stops_and_writes_nothing(bundle, inputs, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = invoke("infer", bundle, inputs["folder"], "--out", out, "--strict")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.png: not an image" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_printing_reports_each_failure_and_predicts_the_rest(bundle, inputs, tmp_path):
    folder = inputs["folder"]
    good = [folder / "a.png", folder / "sub" / "c.png"]
    result = invoke("infer", bundle, good[0], tmp_path / "missing.png", good[1], "--json")
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert [r["input"] for r in records] == [str(good[0]), str(tmp_path / "missing.png"), str(good[1])]
    assert records[1] == {
        "input": str(tmp_path / "missing.png"),
        "error": f"{tmp_path / 'missing.png'}: file not found",
    }
    assert all(len(r["top"]) == 3 for r in (records[0], records[2]))
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.png'}: file not found"]
    text = invoke("infer", bundle, folder, "-k", "1")
    assert text.exit_code == 1
    assert len(text.stdout.splitlines()) == 5
    assert text.stdout.splitlines()[2].startswith(f"{folder / 'sub' / 'c.png'}: ")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.linspace(-0.8, 2.0, 784, dtype=np.float32), "found values from -0.8 to 2"),
        (np.full(784, -5.0, np.float32), "found values from -5 to -5"),
        (np.full(784, 300.5, np.float64), "found values from 300.5 to 300.5"),
    ],
)
def test_infer_and_the_server_refuse_the_same_values(bundle, tmp_path, values, message):
    from cnntool.errors import InputError
    from cnntool.serve.inputs import json_inputs

    path = tmp_path / "normalised.npy"
    np.save(path, values.reshape(28, 28))
    result = invoke("infer", bundle, path)
    assert result.exit_code == 1
    rule = "values must be pixels 0-255 or floats in [0, 1]; " + message
    assert result.stderr.strip() == f"error: {path}: {rule}"
    body = json.dumps({"inputs": [values.reshape(28, 28).tolist()]}).encode()
    with pytest.raises(InputError) as refused:
        json_inputs(body, (1, 28, 28), cnntool.load_bundle(bundle).preprocessing)
    assert str(refused.value) == f"inputs[0]: {rule}"


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--out", "rows.txt"], 1, "--out must end in .jsonl, .csv, .parquet"),
        (["--out", "nowhere/rows.jsonl"], 1, "does not exist"),
        (["--workers", "2"], 2, "--workers and --ray-address need --ray"),
    ],
)
def test_mistakes_are_one_line(bundle, inputs, tmp_path, monkeypatch, args, code, expected):
    monkeypatch.chdir(tmp_path)
    result = invoke("infer", bundle, inputs["folder"] / "a.png", *args)
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_without_ray_installed_ray_and_sweep_say_how_to_install(bundle, inputs, tmp_path, seed_spec_path):
    blocked = (
        "import sys; sys.modules['ray'] = None; from cnntool.cli import main; sys.argv[0] = 'cnntool'; main()"
    )
    commands = [
        ["infer", bundle, inputs["folder"] / "a.png", "--ray"],
        ["sweep", seed_spec_path, "--data", "mnist-sample", "--space", tmp_path / "s.json", "--trials", "2",
         "--out-dir", tmp_path / "sweep"],
    ]  # fmt: skip
    (tmp_path / "s.json").write_text('{"lr": {"loguniform": [0.001, 0.1]}}')
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-c", blocked, *map(str, command)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1, result.stderr
        assert (
            result.stderr.strip()
            == "error: Ray is not installed; install the Ray extra: pip install 'cnntool[ray]'"
        )
