"""One setting for the number of threads.

`--threads N` on the command line or CNNTOOL_THREADS=N in the environment; default: the
number of CPUs this process may use. cnntool parallelises itself, over the examples of a
batch: a batch is cut into one piece per thread and each thread runs the compiled network
on its piece (numba kernels release the GIL). A single image of a large network is shared
among the threads layer by layer instead (predict_parts, cnntool.kernels.parts); otherwise a
batch too small to cut lets the BLAS library inside the kernels use the threads for its
matrix products, when they are large enough to gain from it (model/network.py:
BLAS_THREADS_FLOPS).
So the two never run at once: BLAS gets one thread while the batch pieces run, all of them
otherwise (`use_blas_threads`), and any other BLAS library in the process (scipy's, say) stays
at one. numba's own pool is set to the same count for any kernel that uses prange.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

from cnntool.errors import CnntoolError
from cnntool.system.cpu import kernel_blas

THREADS_ENV = "CNNTOOL_THREADS"
POOL_PREFIX = "cnntool-pool"  # the names of the pool's threads begin with it
_configured: int | None = None
_pool: ThreadPoolExecutor | None = None
_blas_threads: int | None = None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def requested_threads(threads: int | None = None) -> int:
    """The thread count asked for by argument, else the environment, else all CPUs."""
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if raw:
            try:
                threads = int(raw)
            except ValueError:
                raise CnntoolError(f"{THREADS_ENV} must be a positive integer, received {raw!r}") from None
    if threads is None:
        return available_cpus()
    if threads < 1:
        raise CnntoolError(
            f"Invalid value for `threads`. Expected an integer >= 1. Received: threads={threads}"
        )
    return threads


def set_threads(threads: int | None = None) -> int:
    """Use `threads` threads (None: CNNTOOL_THREADS, else all CPUs); returns the count."""
    global _configured, _pool
    # numba takes a second to import: only when threads are set, not for `cnntool --help`.
    import numba

    kernel_blas()  # load the BLAS the kernels call, so that it is limited too

    global _blas_threads
    count = requested_threads(threads)
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # numba.config sets NUMBA_* from the environment at import (globals())
    threadpool_limits(limits=1, user_api="blas")
    _blas_threads = 1
    if _pool is not None and count != _configured:
        _pool.shutdown(wait=True)
        _pool = None
    _configured = count
    return count


def ensure_threads() -> int:
    """The configured thread count, applying the default the first time."""
    return _configured if _configured is not None else set_threads()


def run_parallel(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run jobs at once, the first in this thread and the others in the pool; results in
    order. Exceptions propagate."""
    global _pool
    if len(jobs) == 1:
        return [jobs[0]()]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(ensure_threads() - 1, 1), thread_name_prefix=POOL_PREFIX)
    futures = [_pool.submit(job) for job in jobs[1:]]
    first = jobs[0]()
    return [first, *(future.result() for future in futures)]


def use_blas_threads(count: int) -> None:
    """Let the BLAS the kernels call use `count` threads (cheap when nothing changes)."""
    global _blas_threads
    if count == _blas_threads:
        return
    setter = blas_thread_setter()
    if setter is not None:
        setter(count)
    _blas_threads = count


def blas_thread_setter() -> Any:
    """The thread-count function of the OpenBLAS the kernels call, or None."""
    return kernel_blas().set_threads
