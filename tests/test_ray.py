"""`cnntool infer --ray` on a real local Ray cluster: the same rows as without Ray."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app
from cnntool.data import preprocess

ray = pytest.importorskip("ray")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster of 2 CPUs for the module, always shut down."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, seed_spec_path):
    path = tmp_path_factory.mktemp("bundle") / "seed.cnnb"
    cnntool.save_bundle(cnntool.Network.from_spec(seed_spec_path, seed=5), path)
    return path


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A folder of 40 images, some in a sub-folder, one unreadable; and a .npy of 30."""
    root = tmp_path_factory.mktemp("held-out")
    pixels = np.random.default_rng(1).integers(0, 256, (70, 28, 28), dtype=np.uint8)
    (root / "images" / "more").mkdir(parents=True)
    for index in range(40):
        sub = "more/" if index % 3 == 0 else ""
        Image.fromarray(pixels[index]).save(root / "images" / f"{sub}{index:02d}.png")
    (root / "images" / "more" / "broken.png").write_bytes(b"\x89PNG broken")
    np.save(root / "arrays.npy", pixels[40:])
    return root, pixels


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_rows_with_and_without_ray(bundle, held_out, tmp_path):
    root, pixels = held_out
    sources = [root / "images", root / "arrays.npy"]
    # Two threads here, one in each of the two workers: the rows are still equal to the bit.
    here = invoke(
        "infer", bundle, *sources, "--out", tmp_path / "here.jsonl", "--batch-size", "16", "--threads", "2"
    )
    on_ray = invoke(
        "infer",
        bundle,
        *sources,
        "--out",
        tmp_path / "ray.jsonl",
        "--batch-size",
        "16",
        "--ray",
        "--workers",
        "2",
    )
    assert here.exit_code == on_ray.exit_code == 1, on_ray.output
    expected, got = rows(tmp_path / "here.jsonl"), rows(tmp_path / "ray.jsonl")
    assert len(got) == 71
    assert got == expected
    assert [row["error"] is not None for row in got].count(True) == 1
    assert "broken.png" in next(row["input"] for row in got if row["error"])
    assert on_ray.stderr.count("error: ") == 1

    loaded = cnntool.load_bundle(bundle)
    arrays = [row for row in got if row["input"].endswith("arrays.npy")]
    probabilities = loaded.network.predict_proba(preprocess(pixels[40:, np.newaxis], loaded.preprocessing))
    np.testing.assert_allclose([row["probabilities"] for row in arrays], probabilities, rtol=1e-5, atol=1e-6)
    assert [row["item"] for row in arrays] == list(range(30))


def test_one_worker_and_printing_give_the_same_predictions(bundle, held_out, tmp_path):
    root, _ = held_out
    image = root / "images" / "01.png"
    printed = invoke("infer", bundle, image, root / "arrays.npy", "--json", "--threads", "2")
    on_ray = invoke("infer", bundle, image, root / "arrays.npy", "--json", "--ray", "--workers", "1")
    assert printed.exit_code == on_ray.exit_code == 0, on_ray.output
    assert json.loads(on_ray.stdout) == json.loads(printed.stdout)


def test_more_workers_than_cpus_is_refused(bundle, held_out):
    root, _ = held_out
    result = invoke("infer", bundle, root / "arrays.npy", "--ray", "--workers", "3")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: --workers 3 is more than the 2 CPUs of the Ray cluster; pass --workers 2 or fewer "
        "(each worker needs a CPU of its own)"
    ]
