"""numba's cache entries for code that may call cnntool's kernels carry the kernels' digest
(cnntool.system.numba_cache): a changed kernel file recompiles its callers in files that
did not change, instead of loading their old machine code. Loading them skips numba's
registry refresh, and what compiles later in the process still compiles."""

import json
import os
import subprocess
import sys
import textwrap

USER = textwrap.dedent(
    """
    # A plugin-like module: its kernel calls one of cnntool's.
    import numpy as np
    from numba import njit

    from cnntool.kernels.blas import NO, gemm


    @njit(cache=True)
    def product(a, b, c):
        gemm(NO, NO, 2, 2, 3, 1.0, a, 3, b, 2, 0.0, c, 2)
    """
)
PLAIN = textwrap.dedent(
    """
    from numba import njit


    @njit(cache=True)
    def twice(x):
        return 2 * x
    """
)
RUN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import cnntool.system.numba_cache as numba_cache
    if sys.argv[1] != "-":
        numba_cache.kernels_digest = lambda: sys.argv[1]  # as if a kernel file had changed
    import cnntool.kernels  # noqa: F401  (installs the stamping, as any kernel import does)
    import plain, user
    a = np.arange(6, dtype=np.float32); b = np.arange(6, dtype=np.float32); c = np.zeros(4, np.float32)
    user.product(a, b, c)
    bare = "numba.np.arraymath" not in sys.modules  # numba's registries (and scipy) not loaded
    plain.twice(1.0)
    from numba import njit
    total = njit(lambda x: np.sum(x))(np.ones(3))  # a compile refreshes the registries itself
    expected = (a.reshape(2, 3) @ b.reshape(3, 2)).ravel()
    print(json.dumps({
        "bare": bare,
        "compiled": bool(total == 3.0),
        "user_hits": sum(user.product.stats.cache_hits.values()),
        "plain_hits": sum(plain.twice.stats.cache_hits.values()),
        "right": bool(np.array_equal(c, expected)),
    }))
    """
)


def run(folder, digest):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(folder / "numba"), "PYTHONPATH": os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", RUN, digest], capture_output=True, text=True, env=env, cwd=folder, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_changed_kernel_digest_recompiles_its_callers_only(tmp_path):
    (tmp_path / "user.py").write_text(USER)
    (tmp_path / "plain.py").write_text(PLAIN)
    first = run(tmp_path, "-")
    assert first == {"user_hits": 0, "plain_hits": 0, "right": True, "bare": False, "compiled": True}
    again = run(tmp_path, "-")
    # both from the cache, cnntool's code without loading numba's registries
    assert again == {"user_hits": 1, "plain_hits": 1, "right": True, "bare": True, "compiled": True}
    changed = run(tmp_path, "other kernels")
    # the caller of cnntool's kernel compiles again; code that mentions no cnntool does not
    assert changed == {"user_hits": 0, "plain_hits": 1, "right": True, "bare": False, "compiled": True}
