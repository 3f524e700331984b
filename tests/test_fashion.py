"""The full Fashion-MNIST, from Debian's dataset-fashion-mnist: its files are the published ones,
a real download of them works, and a short `cnntool train` run reaches 85% on the full test set.

Skipped when the package is not installed, unless CNNTOOL_REQUIRE_SYSTEM=1 (CI), where a
missing package fails.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnntool import load_bundle
from cnntool.data import catalog, load_dataset
from cnntool.data.catalog import FASHION_MNIST
from test_download import Mirror

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
INSTALLED = Path("/usr/share/datasets/fashion-mnist")
# Zalando's README publishes the md5 of each archive: an independent check of the sha256 values.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# The gzip modification times of the published archives, which Debian's copies drop.
PUBLISHED_MTIME = {"train": 1504176606, "t10k": 1504176627}


@pytest.fixture(scope="module")
def installed() -> Path:
    if not all((INSTALLED / name).is_file() for name in PUBLISHED_MD5):
        reason = f"Debian package dataset-fashion-mnist is not installed ({INSTALLED} is missing)"
        if os.environ.get("CNNTOOL_REQUIRE_SYSTEM") == "1":
            pytest.fail(f"{reason}; CNNTOOL_REQUIRE_SYSTEM=1 requires it (.ci/debian-packages)")
        pytest.skip(reason)
    return INSTALLED


def published_archive(debian_copy: Path) -> bytes:
    """The archive as Zalando published it: Debian's bytes with the gzip header's file name
    (FNAME flag) and modification time put back."""
    data = debian_copy.read_bytes()
    assert data[:4] == b"\x1f\x8b\x08\x00"  # deflate, no flags: the name was stripped
    name = debian_copy.name.removesuffix(".gz")
    mtime = PUBLISHED_MTIME[name.split("-")[0]]
    return b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + data[8:10] + name.encode() + b"\0" + data[10:]


def test_installed_files_are_the_published_data(installed):
    for remote in FASHION_MNIST.files.values():
        debian_copy = installed / remote.name
        archive = published_archive(debian_copy)
        assert hashlib.md5(archive).hexdigest() == PUBLISHED_MD5[remote.name]
        assert hashlib.sha256(archive).hexdigest() == remote.sha256
        assert len(archive) == remote.bytes
        # The other accepted forms: the uncompressed content and Debian's copy.
        content = gzip.decompress(debian_copy.read_bytes())
        assert remote.also == (
            hashlib.sha256(content).hexdigest(),
            hashlib.sha256(debian_copy.read_bytes()).hexdigest(),
        )


def test_named_dataset_uses_the_installed_copy(installed):
    dataset = load_dataset("fashion-mnist")
    assert dataset.name == "fashion-mnist"
    assert dataset.info["source"] == str(installed)
    assert dataset.x_train.shape == (60000, 1, 28, 28)
    assert dataset.x_test.shape == (10000, 1, 28, 28)
    assert dataset.classes[0] == "T-shirt/top" and dataset.classes[9] == "Ankle boot"
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
    assert [f["bytes"] for f in dataset.info["files"]] == [
        (installed / f["name"]).stat().st_size for f in dataset.info["files"]
    ]


def test_real_download_from_a_local_mirror(installed, monkeypatch, tmp_path):
    mirror = Mirror()
    try:
        for remote in FASHION_MNIST.files.values():
            mirror.add(f"/fashion-mnist/{remote.name}", published_archive(installed / remote.name))
        monkeypatch.setitem(
            catalog.NAMED, "fashion-mnist", dataclasses.replace(FASHION_MNIST, system_folders=())
        )
        monkeypatch.setenv("CNNTOOL_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("CNNTOOL_DATASET_MIRRORS", mirror.url)

        dataset = load_dataset("fashion-mnist")
    finally:
        mirror.close()

    cache = tmp_path / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(PUBLISHED_MD5)
    assert dataset.info["source"] == str(cache)
    assert [f["sha256"] for f in dataset.info["files"]] == [r.sha256 for r in FASHION_MNIST.files.values()]
    installed_copy = load_dataset(installed)
    np.testing.assert_array_equal(dataset.x_train, installed_copy.x_train)
    np.testing.assert_array_equal(dataset.y_test, installed_copy.y_test)


QUICK_SPEC = {
    "name": "fashion-quick",
    "input_shape": [1, 28, 28],
    "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 32, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
}


def test_short_training_run_on_the_full_set_reaches_85_percent(installed, tmp_path):
    spec = tmp_path / "quick.json"
    spec.write_text(json.dumps(QUICK_SPEC))
    out = tmp_path / "quick.cnnb"
    train = subprocess.run(
        [CNNTOOL, "train", spec, "--data", "fashion-mnist", "--epochs", "2", "--batch-size", "32",
         "--optimizer", "adam", "--lr", "0.002", "--val-split", "0", "--out", out, "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    trained = json.loads(train.stdout)
    assert trained["test"]["examples"] == 10000

    evaluated = subprocess.run([CNNTOOL, "eval", out, "--json"], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)

    assert report["dataset"] == "fashion-mnist"
    assert report["examples"] == 10000
    assert report["accuracy"] == pytest.approx(trained["test"]["accuracy"])
    assert report["accuracy"] >= 0.85, report["accuracy"]
    assert report["classes"][6] == "Shirt"
    assert sum(row["support"] for row in report["per_class"]) == 10000
    recorded = load_bundle(out).meta["dataset"]
    assert (recorded["name"], recorded["source"]) == ("fashion-mnist", str(installed))
    assert (recorded["train_size"], recorded["test_size"]) == (60000, 10000)
    assert [f["sha256"] for f in recorded["files"]] == [r.also[1] for r in FASHION_MNIST.files.values()]
