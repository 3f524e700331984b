"""The first epoch does not hide the compile: `train` says it compiles, and how long it took,
and keeps that time out of the epoch's seconds, recording it apart (#18 defect 4)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cnntool

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
SPEC = {
    "name": "compiled",
    "input_shape": [1, 28, 28],
    "layers": [
        {"type": "conv2d", "filters": 5, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d"},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
}


def test_compile_is_announced_timed_and_kept_out_of_the_first_epoch(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "compiled.cnnb"
    # An empty plan cache: the network's compiled plan is built now, as on a fresh machine.
    env = {**os.environ, "CNNTOOL_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [CNNTOOL, "train", spec, "--data", "mnist-sample", "--epochs", "2", "--val-split", "0", "--out", out],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    match = re.fullmatch(r"compiling kernels \(once per machine\)\.\.\. (\d+\.\d)s", lines[1])
    assert match, lines
    assert lines[2].startswith("epoch 1/2")
    meta = cnntool.load_bundle(out).meta
    compile_seconds = meta["compile_seconds"]
    assert f"{compile_seconds:.1f}" == match[1]
    assert compile_seconds > 1.0  # a plan was compiled
    first, second = (record["seconds"] for record in meta["history"])
    assert first < 3 * second + 0.5, (first, second, compile_seconds)
    assert meta["train_seconds"] == first + second
