"""Choosing the BLAS library, and the kernels inside it, that cnntool's matrix products run on.

The library: numpy's own OpenBLAS where numpy carries one (its wheels do), else scipy's.
Both are OpenBLAS builds of one age, but numpy's (0.3.31 with numpy 2.4) multiplies the
shapes a convolution makes 1.15-2x faster than scipy's (0.3.30 with scipy 1.17) on one
AVX2 core, measured on a 2-core AMD EPYC: 127 against 214 µs for 24 x 216 by 216 x 838, 61
against 121 µs for 16 x 144 by 144 x 838, about the same for 256-cubed. The routines are
found by name in numpy's extension module, whose dependencies include its BLAS.

The kernels inside it: OpenBLAS builds carry several kernel sets and pick one per CPU
model when the library is loaded (or take OPENBLAS_CORETYPE). On CPUs with AVX-512 the
AVX2 set ("Haswell") is often what gets used: OpenBLAS maps AMD Zen 4/5 to it, and
environments pin it for reproducibility. The AVX-512 set ("SkylakeX") multiplies
cnntool's float32 matrices 1.5-3x faster there (measured on a Zen 5 EPYC: 193 against 105
GFLOP/s single-threaded on a convolution product). numpy's library is loaded with numpy,
before cnntool can choose for it, so where the CPU has AVX-512 and numpy's library runs
other kernels, cnntool uses scipy's, loaded with SkylakeX (then puts the environment back).

CNNTOOL_BLAS_CORETYPE: "auto" (default, as above), "keep" (numpy's library with the kernels
it chose, or OPENBLAS_CORETYPE's), or a core type name: scipy's library loaded with it.
A name has an effect only if scipy's BLAS is not loaded yet when cnntool's kernels are
first imported.

Integer arguments: numpy's OpenBLAS takes 64-bit integers, scipy's 32-bit ones, each by
pointer. The kernels pass 64-bit ones to both: on a little-endian CPU the first four bytes
of a 64-bit integer below 2**31 are the same number as a 32-bit integer.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

CORETYPE_ENV = "CNNTOOL_BLAS_CORETYPE"
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids"}
ROUTINES = ("sgemm", "sgemv", "saxpy")
# How OpenBLAS builds name their symbols: numpy's wheels (scipy-openblas64), older numpy
# wheels (openblas64_), scipy's wheels (scipy-openblas32) and plain builds.
SYMBOL_STYLES = (("scipy_", "_64_", "64_"), ("", "_64_", "64_"), ("scipy_", "_", ""), ("", "_", ""))


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
    """The OpenBLAS core type to load scipy's library with, or None to leave the choice alone."""
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


@dataclass(frozen=True)
class KernelBlas:
    """The OpenBLAS the kernels call: where it came from, its kernel set, the addresses of
    the routines in ROUTINES and its thread-count function."""

    source: str  # "numpy" or "scipy"
    coretype: str
    addresses: dict[str, int]
    set_threads: Callable[[int], None] | None


def _openblas_in(
    library: ctypes.CDLL, source: str, routines: dict[str, int] | None = None
) -> KernelBlas | None:
    """The OpenBLAS whose symbols `library` reaches, in the first naming style it has
    (`routines`: addresses known already, from scipy)."""
    for prefix, suffix, function_suffix in SYMBOL_STYLES:
        found = {name: getattr(library, f"{prefix}{name}{suffix}", None) for name in ROUTINES}
        corename = getattr(library, f"{prefix}openblas_get_corename{function_suffix}", None)
        if corename is None or (routines is None and None in found.values()):
            continue
        corename.restype = ctypes.c_char_p
        setter = getattr(library, f"{prefix}openblas_set_num_threads{function_suffix}", None)
        if setter is not None:
            setter.argtypes = [ctypes.c_int]
        if routines is None:
            routines = {name: ctypes.cast(f, ctypes.c_void_p).value or 0 for name, f in found.items() if f}
        return KernelBlas(source, (corename() or b"").decode(), routines, setter)
    return None


def numpy_blas() -> KernelBlas | None:
    """numpy's own OpenBLAS, or None (numpy built against another BLAS)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    try:
        extension = ctypes.CDLL(core._multiarray_umath.__file__)
    except (OSError, AttributeError):
        return None
    return _openblas_in(extension, "numpy")


def scipy_blas() -> KernelBlas:
    """scipy's OpenBLAS, loaded with the core type blas_coretype() asks for."""
    with blas_loading():
        import scipy.linalg.cython_blas as cython_blas
    from numba.extending import get_cython_function_address

    routines = {name: get_cython_function_address("scipy.linalg.cython_blas", name) for name in ROUTINES}
    found = _openblas_in(ctypes.CDLL(cython_blas.__file__), "scipy", routines)
    return found or KernelBlas("scipy", "", routines, None)


@functools.cache
def kernel_blas() -> KernelBlas:
    """The BLAS the kernels call (see the module docs), loaded on first use."""
    if sys.byteorder != "little":  # the integer arguments above
        raise RuntimeError("cnntool's BLAS calls need a little-endian CPU")
    wanted = os.environ.get(CORETYPE_ENV, "auto").strip() or "auto"
    if wanted in ("auto", "keep"):
        found = numpy_blas()
        avx512_unused = found is not None and found.coretype.lower() not in AVX512_CORES
        if found is not None and (wanted == "keep" or not (avx512_unused and blas_coretype())):
            return found
    return scipy_blas()
