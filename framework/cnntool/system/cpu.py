"""Choosing the BLAS kernels cnntool's matrix products run on.

OpenBLAS builds carry several kernel sets and pick one per CPU model when the library is
loaded (or take OPENBLAS_CORETYPE). On CPUs with AVX-512 the AVX2 set ("Haswell") is often
what gets used: OpenBLAS maps AMD Zen 4/5 to it, and environments pin it for
reproducibility. The AVX-512 set ("SkylakeX") multiplies cnntool's float32 matrices 1.5-3x
faster there (measured on a Zen 5 EPYC: 193 against 105 GFLOP/s single-threaded on a
convolution product), so while loading the library cnntool asks for it when the CPU has
AVX-512, then puts the environment back as it was.

CNNTOOL_BLAS_CORETYPE: "auto" (default, as above), "keep" (leave OpenBLAS's own choice or
OPENBLAS_CORETYPE alone), or a core type name passed to OpenBLAS as it is. It has an effect
only if scipy's BLAS is not loaded yet when cnntool's kernels are first imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

CORETYPE_ENV = "CNNTOOL_BLAS_CORETYPE"
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            first = handle.read(1 << 16).split("\n\n", 1)[0]
    except OSError:
        return set()
    for line in first.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def blas_coretype() -> str | None:
    """The OpenBLAS core type to load with, or None to leave the choice alone."""
    wanted = os.environ.get(CORETYPE_ENV, "auto").strip() or "auto"
    if wanted == "keep":
        return None
    if wanted != "auto":
        return wanted
    return "SkylakeX" if cpu_flags() >= AVX512_FLAGS else None


@contextlib.contextmanager
def blas_loading() -> Iterator[None]:
    """Set OPENBLAS_CORETYPE for the duration of loading the BLAS library, then restore it."""
    coretype = blas_coretype()
    previous = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        yield
    finally:
        if coretype is not None:
            if previous is None:
                del os.environ["OPENBLAS_CORETYPE"]
            else:
                os.environ["OPENBLAS_CORETYPE"] = previous


def load_blas() -> None:
    """Load the BLAS library the kernels call (scipy's OpenBLAS), with the core type above.
    `cnntool.kernels.blas` binds its functions; `cnntool.system.threads` limits its threads."""
    with blas_loading():
        import scipy.linalg.cython_blas  # noqa: F401  (heavy: loaded when threads are first set)
