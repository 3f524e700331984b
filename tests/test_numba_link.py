"""A compiled plan is optimised lightly and links its kernels without optimising them a
second time (cnntool.system.numba_link), and computes what layer-by-layer computes."""

import json
import os
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import json
    import numpy as np
    import cnntool

    spec = {"input_shape": [1, 6, 6], "layers": [
        {"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 3}]}
    net = cnntool.Network.from_spec(spec, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    probs = net.predict_proba(x)
    plain = cnntool.Network.from_spec(spec, seed=0)
    plain.use_plan = False

    def passes(dispatcher):
        (result,) = dispatcher.overloads.values()
        return [record.name for record in result.library._recorded_timings]

    from numba import njit

    @njit
    def other(a):  # any other numba function
        return a.sum()

    other(x)
    print(json.dumps({
        "plan": passes(net.plan.module.predict),
        "other": passes(other),
        "same": bool(np.allclose(probs, plain.predict_proba(x), atol=1e-6)),
    }))
    """
)


def test_plans_run_the_cheap_pipeline_and_other_code_the_full_one(tmp_path):
    # A new plan cache: the plan compiles here (its kernels may come from numba's cache).
    env = {**os.environ, "NUMBA_LLVM_PASS_TIMINGS": "1", "CNNTOOL_CACHE_DIR": str(tmp_path / "plans")}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Module passes (cheap optimization, a cnntool plan)" in found["plan"]
    assert any(name.startswith("Function passes (a cnntool plan) on ") for name in found["plan"])
    assert not any(name.startswith("Function passes (a cnntool plan)") for name in found["other"])
    assert "Module passes (full optimization)" not in found["plan"]
    assert "Module passes (full optimization)" in found["other"]
    assert found["same"]
