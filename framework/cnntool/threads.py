"""One setting for the number of threads, applied to numba and to BLAS alike.

`--threads N` on the command line or CNNTOOL_THREADS=N in the environment; default: the
number of CPUs this process may use. Set once, before the first kernel runs, so numba's pool
and OpenBLAS's pools never compete for the same cores.
"""

from __future__ import annotations

import os

from cnntool.errors import CnntoolError

THREADS_ENV = "CNNTOOL_THREADS"
_configured: int | None = None


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
    """Limit numba and every loaded BLAS to `threads` threads; returns the count applied."""
    global _configured
    import numba
    import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS numba's np.dot calls)
    from threadpoolctl import threadpool_limits

    count = min(requested_threads(threads), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(count)
    threadpool_limits(limits=count)
    _configured = count
    return count


def ensure_threads() -> int:
    """Apply the default setting once, if nobody has chosen yet."""
    return _configured if _configured is not None else set_threads()
