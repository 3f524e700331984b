"""The same seed gives the same weights whether the compiled code was just compiled or was
loaded from the caches: users compare bundle digests to check that a run is reproducible."""

import os
import subprocess
import sys
from pathlib import Path

import msgpack

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))


def train(root: Path, out: Path, numba_cache: Path, plan_cache: Path) -> tuple[str, list[float]]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "CNNTOOL_CACHE_DIR": str(plan_cache)}
    subprocess.run(
        [CNNTOOL, "train", root / "models/seed_cnn.json", "--data", "mnist-sample", "--epochs", "2",
         "--seed", "3", "--out", out],
        env=env, capture_output=True, check=True, timeout=900,
    )  # fmt: skip
    document = msgpack.unpackb(out.read_bytes(), raw=False)
    return document["digest"], [epoch["loss"] for epoch in document["meta"]["history"]]


def test_cold_and_warm_caches_give_identical_weights(tmp_path, root):
    numba_cache, plan_cache = tmp_path / "numba", tmp_path / "plans"
    cold = train(root, tmp_path / "cold.cnnb", numba_cache, plan_cache)
    warm = train(root, tmp_path / "warm.cnnb", numba_cache, plan_cache)
    # Kernels from the cache, the network's plan compiled afresh against them.
    mixed = train(root, tmp_path / "mixed.cnnb", numba_cache, tmp_path / "fresh-plans")
    assert cold == warm == mixed
