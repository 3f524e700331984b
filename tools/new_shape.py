"""Compile overhead of a never-seen network shape on a warm kernel cache.

    python tools/new_shape.py models/mnist_cnn.json 2.filters=8 0.filters=16

Each measurement is a fresh process that builds the network and runs what the first epoch
of training and inference run once (a train_step and an evaluate at batch 64, a predict of one
image and of 64). First the spec as given, twice (the second run finds everything cached: its time is
the floor), then each change alone (`LAYER.FIELD=VALUE`, the layer by index), every one a
shape no earlier run compiled. Printed: seconds per run and the extra over the floor.
Uses the caches of CNNTOOL_CACHE_DIR and NUMBA_CACHE_DIR as set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
import numpy as np
import cnntool
spec = json.load(open(sys.argv[1]))
start = time.perf_counter()
net = cnntool.Network.from_spec(spec, seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, *net.input_shape)).astype(np.float32)
labels = rng.integers(0, net.output_shape[0], 64).astype(np.int64)
net.train_step(x, labels)
net.evaluate_batch(x, labels, np.empty(64, np.int64))
net.predict_proba(x[:1])
net.predict_proba(x)
print(time.perf_counter() - start)
"""


def run(spec: dict) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        command = [sys.executable, "-c", CHILD, f.name]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
    finally:
        Path(f.name).unlink()
    return float(out.stdout.split()[-1])


def changed(spec: dict, change: str) -> dict:
    where, value = change.split("=", 1)
    index, field = where.split(".", 1)
    new = json.loads(json.dumps(spec))
    new["layers"][int(index)][field] = json.loads(value)
    return new


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    first = run(spec)
    floor = run(spec)
    print(f"{sys.argv[1]}: first run {first:.2f} s, cached {floor:.2f} s")
    for change in sys.argv[2:]:
        seconds = run(changed(spec, change))
        print(f"  {change}: {seconds:.2f} s, {seconds - floor:+.2f} s over cached")


if __name__ == "__main__":
    main()
