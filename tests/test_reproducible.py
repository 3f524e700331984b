"""The same seed gives the same weights whether the compiled code was just compiled or was
loaded from the caches: users compare bundle digests to check that a run is reproducible.

numba runs other machine code in the process that compiles a function than in one that
loads it from the cache; a plan is therefore compiled in a child process (cnntool.compile.plan),
and this test trains in real processes on fresh cache folders to see that it holds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np

import cnntool

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
# A network no other test compiles, on 300 images: its cold run ended with other weights
# than its warm ones before plans were compiled in a child process.
SPEC = {
    "name": "reproducible",
    "input_shape": [1, 28, 28],
    "layers": [{"type": "conv2d", "filters": 5, "kernel_size": 3}, {"type": "relu"},
               {"type": "maxpool2d"}, {"type": "flatten"}, {"type": "dense", "units": 10}],
}  # fmt: skip


def train(folder: Path, name: str, numba_cache: Path, plan_cache: Path) -> tuple[str, list[float]]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "CNNTOOL_CACHE_DIR": str(plan_cache)}
    out = folder / f"{name}.cnnb"
    subprocess.run(
        [CNNTOOL, "train", folder / "spec.json", "--data", folder / "digits.npz", "--epochs", "1",
         "--val-split", "0", "--seed", "3", "--out", out],
        env=env, capture_output=True, check=True, timeout=900,
    )  # fmt: skip
    document = msgpack.unpackb(out.read_bytes(), raw=False)
    return document["digest"], [epoch["loss"] for epoch in document["meta"]["history"]]


def test_cold_and_warm_caches_give_identical_weights(tmp_path):
    sample = cnntool.load_dataset("mnist-sample")
    np.savez(tmp_path / "digits.npz", x_train=sample.x_train[:300], y_train=sample.y_train[:300],
             x_test=sample.x_test[:50], y_test=sample.y_test[:50])  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    numba_cache, plan_cache = tmp_path / "numba", tmp_path / "plans"
    cold = train(tmp_path, "cold", numba_cache, plan_cache)
    warm = train(tmp_path, "warm", numba_cache, plan_cache)
    # Kernels from the cache, the network's plan compiled afresh against them.
    mixed = train(tmp_path, "mixed", numba_cache, tmp_path / "fresh-plans")
    assert cold == warm == mixed
