"""Every built-in layer type passes the same conformance checks a plugin's layers must:
finite-difference gradients, shape inference against the real output, config round trip
and bundle round trip (cnntool.testing), on each type's examples."""

import tomllib

from cnntool.testing import CHECKS, check_distribution


def test_every_builtin_layer_type_passes_the_plugin_checks(root):
    # Without `compiled` (a plan per example, minutes): test_plan.py compares the plan with
    # layer-by-layer execution on whole networks of the built-in layers.
    results = check_distribution("cnntool", checks=tuple(c for c in CHECKS if c != "compiled"))
    failures = [f"{r.type} {r.check}: {r.message}" for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    declared = set(
        tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]["cnntool.layers"]
    )
    assert {r.type for r in results} == declared
    assert {r.check for r in results} == {"gradients", "shapes", "config", "repeat", "bundle"}
