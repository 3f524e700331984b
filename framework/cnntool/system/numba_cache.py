"""numba's disk cache, made to notice when cnntool's kernels change.

numba keys a cached function on its own source file alone. A kernel's cached machine code
also holds the code of every kernel it calls, from other files, so after an edit to one
kernel file (an editable install, a `git pull`) the callers in the files that did not
change would load the old code of their callees. With `kernels/blas.py` that is a crash:
the old code passes the sizes as 32-bit integers to a BLAS that now reads 64-bit ones.

So every cached function whose source file is part of cnntool, or mentions it (a plugin's
kernels, a generated plan), is stamped with its own file's stamp and the digest of
cnntool's kernel sources: any change to a kernel file recompiles them all, once. Other
numba code in the process keeps numba's own stamp.

Loading such a function from the cache also skips numba's `refresh` of its compiler
registries: that imports every implementation numba has (and scipy.linalg with them), 0.4-0.6
s of a warm `cnntool infer`, for machine code that needs none of them, only numba's runtime
(initialised here). numba's compiler refreshes the registries itself before it compiles
anything, so a later cache miss compiles as before.

This wraps numba's cache locators (`CacheImpl._locator_classes`) and `Cache.load_overload`,
which are not public API; with a numba that lacks them, nothing is changed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent  # framework/cnntool
KERNELS = PACKAGE / "kernels"


def files_digest(paths: Iterable[Path]) -> str:
    """sha256 (16 hex digits) of the contents of `paths`, in sorted order."""
    sha = hashlib.sha256()
    for path in sorted(paths):
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def kernel_files() -> set[Path]:
    """The source files of cnntool's kernels."""
    return set(KERNELS.glob("*.py"))


@functools.cache
def kernels_digest() -> str:
    return files_digest(kernel_files())


@functools.cache
def depends_on_cnntool(py_file: str) -> bool:
    """Whether a cached function from `py_file` may call cnntool's kernels."""
    path = Path(py_file).resolve()
    if path.is_relative_to(PACKAGE):
        return True
    try:
        return b"cnntool" in path.read_bytes()
    except OSError:
        return False


def _with_kernel_digest(base: type) -> type:
    class Locator(base):
        def get_source_stamp(self) -> Any:
            stamp = super().get_source_stamp()
            py_file = getattr(self, "_py_file", None)
            if py_file and os.path.exists(py_file) and depends_on_cnntool(py_file):
                return (stamp, kernels_digest())
            return stamp

    Locator.__name__ = Locator.__qualname__ = f"Cnntool{base.__name__}"
    Locator.__doc__ = f"{base.__name__}, stamped with cnntool's kernel digest (cnntool.system.numba_cache)."
    return Locator


def _without_refresh(original: Any) -> Any:
    from numba.core.runtime import rtsys

    @functools.wraps(original)
    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        code = getattr(getattr(self, "_py_func", None), "__code__", None)
        if code is None or not depends_on_cnntool(code.co_filename):
            return original(self, sig, target_context)
        rtsys.initialize(target_context)  # what refresh does that the loaded code needs
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload.cnntool = True  # type: ignore[attr-defined]
    return load_overload


def install() -> None:
    """Stamp cnntool's cached functions with the kernel digest, and load them without
    refreshing numba's registries (see the module docs); call before any kernel is defined.
    Idempotent."""
    from numba.core import caching

    cache = getattr(caching, "Cache", None)
    load = getattr(cache, "load_overload", None)
    if (
        load is not None
        and not getattr(load, "cnntool", False)
        and all(hasattr(cache, name) for name in ("_guard_against_spurious_io_errors", "_load_overload"))
    ):
        cache.load_overload = _without_refresh(load)  # type: ignore[union-attr]
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list) or any(c.__name__.startswith("Cnntool") for c in classes):
        return
    impl._locator_classes = [_with_kernel_digest(c) for c in classes]  # type: ignore[union-attr]
