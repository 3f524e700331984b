"""The plan cache: generated modules are written under a name derived from their text (into
CNNTOOL_CACHE_DIR, else ~/.cache/cnntool) and imported from there, so numba caches their
functions like any kernel and the same network shape reuses compiled code in every process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from cnntool.system.files import atomic_write
from cnntool.system.numba_cache import files_digest, kernel_files

CACHE_ENV = "CNNTOOL_CACHE_DIR"


def cache_dir() -> Path:
    """Where generated plans (and numba's cache of them) live."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnntool"


def load_module(source: str, prefix: str = "cnntool_plan") -> ModuleType:
    """Write the source under a name derived from it (once) and import it."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    name = f"{prefix}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    folder = cache_dir() / "plans"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        if not path.is_file() or path.read_text() != source:
            atomic_write(path, source.encode(), OSError)
    except OSError:
        # An unwritable cache: compile from a private folder (nothing is kept between runs).
        folder = Path(tempfile.mkdtemp(prefix="cnntool-plans-"))
        path = folder / f"{name}.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    sys.modules[name] = module
    return module


def kernel_sources_digest(kernels: dict) -> str:
    """sha256 of the source files of cnntool's kernels and of every module a kernel comes from."""
    files = {
        Path(module.__file__) for module in (sys.modules[k.__module__] for k in kernels) if module.__file__
    }
    return files_digest(files | kernel_files())


# numba runs other machine code in the process that compiles a function than in a process
# that loads it from the cache (numba issue 10617), and the two differ in the last bits of
# float32 sums: a training run that compiled its plan ended with other weights than the same
# run on a warm cache. Loading the cached plan in the compiling process does not help (its
# kernels stay the ones compiled there). So training compiles a new plan in a child process
# first (compile_in_child), and every training process runs the cached code. The child
# compiles what an epoch runs and what serves its predictions (`predict`: Ray workers,
# `serve` and `infer` must compute what the training process computes), no more: `forward`
# and `backward` compile when first called (each plan function is a compile of its own,
# with every kernel it calls linked in and generated again).
# (Plan.child_functions adds, when the plan uses them, train_parts, train_step cut at batch
# norm's Sync points, and predict_parts, the batch-1 predict shared among threads.)
CHILD_FUNCTIONS = ("train_step", "evaluate", "predict")


def is_cached(module: ModuleType, functions: tuple[str, ...]) -> bool:
    """Whether numba's cache holds code of each of the plan functions (what the training
    child compiles: Plan.child_functions), compiled by some process (numba's own check, the
    index of each function for its source file's stamp)."""
    try:
        return all(getattr(module, name)._cache._cache_file._load_index() for name in functions)
    except Exception:  # another numba: no way to tell, compile here
        return False
