"""Plan functions are optimised lightly, and link their kernels without optimising them again.

A compiled plan function (cnntool.compile.plan) is glue: it slices the flat arrays into
views and calls the network's kernels, with sizes that are arguments, not constants LLVM
could fold in. numba optimises it like any function, at full strength, twice:

- its function passes at -O3, over hundreds of slices with their bounds checks: the largest
  part of a ResNet plan's compile;
- then, since a numba function links a copy of the LLVM code of every compiled function it
  calls, the whole pipeline once more over the linked module (every kernel of the network,
  already optimised in its own module): 60% of the LLVM time of the seed network's
  train_step.

So a library holding a plan function runs the function passes at -O1 and numba's cheap module
pipeline only (the one numba runs first anyway, reference-count pruning after it). Every
kernel keeps the code its own module's full pipeline made. Kernels cached, one process,
2-core AVX2: the ResNet's train_step compiles in 34 s instead of 51 s, the seed network's in
about 8 s instead of 12 s; inference and training steps run as fast as before (the minimum of
many calls, within the machine's noise).

This replaces numba's `CPUCodeLibrary._optimize_functions` and `_optimize_final_module`,
which are not public API; with a numba that lacks them, nothing is changed.
"""

from __future__ import annotations

import functools
from typing import Any

PLAN_PREFIX = "cnntool_plan_"  # compile.cache.load_module's module names, in mangled names


def holds_plan(module: Any) -> bool:
    """Whether an LLVM module defines a function of a generated plan module."""
    return any(PLAN_PREFIX in function.name for function in module.functions if not function.is_declaration)


def _cheap_for_plans(original: Any) -> Any:
    from numba.core import config
    from numba.core.codegen import remove_redundant_nrt_refct

    @functools.wraps(original)
    def optimize_final_module(self: Any) -> None:
        codegen = self._codegen
        known = hasattr(codegen, "_loopvect") and hasattr(codegen, "_opt_level")
        if not (known and holds_plan(self._final_module)):
            return original(self)
        manager, builder = codegen._module_pass_manager(
            loop_vectorize=codegen._loopvect, slp_vectorize=False, opt=codegen._opt_level, cost="cheap"
        )
        with self._recorded_timings.record("Module passes (cheap optimization, a cnntool plan)", builder):
            manager.run(self._final_module, builder)
        if not getattr(config, "LLVM_REFPRUNE_PASS", False):
            self._final_module = remove_redundant_nrt_refct(self._final_module)
        return None

    optimize_final_module.cnntool = True  # type: ignore[attr-defined]
    return optimize_final_module


GLUE_OPT = 1  # the function passes' level for plan functions


def _light_for_plans(original: Any) -> Any:
    @functools.wraps(original)
    def optimize_functions(self: Any, ll_module: Any) -> None:
        codegen = self._codegen
        if not (hasattr(codegen, "_data_layout") and holds_plan(ll_module)):
            return original(self, ll_module)
        ll_module.data_layout = codegen._data_layout
        for function in ll_module.functions:
            manager, builder = codegen._function_pass_manager(opt=GLUE_OPT)
            with self._recorded_timings.record(
                f"Function passes (a cnntool plan) on {function.name!r}", builder
            ):
                manager.run(function, builder)
        return None

    optimize_functions.cnntool = True  # type: ignore[attr-defined]
    return optimize_functions


def install() -> None:
    """Optimise plan functions lightly, their linked modules with the cheap pipeline (see
    the module docs). Idempotent."""
    from numba.core import codegen

    library = getattr(codegen, "CPUCodeLibrary", None)
    final = getattr(library, "_optimize_final_module", None)
    functions = getattr(library, "_optimize_functions", None)
    managers = getattr(codegen, "CPUCodegen", None)
    if (
        final is None
        or functions is None
        or getattr(final, "cnntool", False)
        or not hasattr(codegen, "remove_redundant_nrt_refct")
        or not hasattr(managers, "_module_pass_manager")
        or not hasattr(managers, "_function_pass_manager")
    ):
        return
    library._optimize_final_module = _cheap_for_plans(final)  # type: ignore[union-attr]
    library._optimize_functions = _light_for_plans(functions)  # type: ignore[union-attr]
