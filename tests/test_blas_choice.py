"""The BLAS the kernels call (system/cpu.py): numpy's OpenBLAS with 64-bit integers, or
scipy's with 32-bit ones, read from the 64-bit integers the kernels pass. Each choice runs
in its own process (a process binds one library) and every product path is checked
against numpy there."""

import json
import os
import subprocess
import sys

CHECK = r"""
import json
import numpy as np
from cnntool.system.cpu import kernel_blas
from cnntool.kernels.blas import NO, YES, axpy, gemm

rng = np.random.default_rng(0)
errors = []
# (m, n, k): sgemm, sgemv (one row), loops (inner size <= 4), sgemm with a long inner size
for m, n, k in [(7, 9, 13), (1, 33, 17), (5, 6, 3), (24, 70, 216)]:
    for trans_a in (NO, YES):
        for trans_b in (NO, YES):
            a = rng.standard_normal((m, k) if trans_a == NO else (k, m)).astype(np.float32)
            b = rng.standard_normal((k, n) if trans_b == NO else (n, k)).astype(np.float32)
            c = rng.standard_normal((m, n + 3)).astype(np.float32)  # row stride n + 3
            expected = c.copy()
            expected[:, :n] = 0.5 * (a if trans_a == NO else a.T) @ (b if trans_b == NO else b.T)
            expected[:, :n] += 0.25 * c[:, :n]
            gemm(trans_a, trans_b, m, n, k, 0.5, a.ravel(), a.shape[1], b.ravel(), b.shape[1],
                 0.25, c.ravel(), n + 3)
            errors.append(float(np.abs(c - expected).max()))
x = rng.standard_normal(1000).astype(np.float32)
y = rng.standard_normal(1000).astype(np.float32)
expected = y + 1.5 * x
axpy(1.5, x, y)
errors.append(float(np.abs(y - expected).max()))
blas = kernel_blas()
print(json.dumps({"source": blas.source, "coretype": blas.coretype, "error": max(errors),
                  "threads": blas.set_threads is not None}))
"""


def run_check(coretype: str) -> dict:
    env = {**os.environ, "CNNTOOL_BLAS_CORETYPE": coretype}
    env.pop("OPENBLAS_CORETYPE", None)
    command = [sys.executable, "-c", CHECK]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_numpy_openblas_with_its_own_kernels():
    found = run_check("keep")
    assert found["source"] == "numpy"
    assert found["coretype"]  # OpenBLAS named its kernel set
    assert found["threads"]
    assert found["error"] < 1e-4


def test_scipy_openblas_with_a_named_kernel_set():
    # 32-bit integers: the product sizes reach it through the low half of 64-bit ones
    found = run_check("Haswell")
    assert found["source"] == "scipy"
    assert found["coretype"].lower() == "haswell"
    assert found["threads"]
    assert found["error"] < 1e-4
