"""Checks any layer type should pass, for cnntool's own tests and for plugin authors.

    from cnntool.testing import check_layer, check_gradients, make_layer
    layer = make_layer({"type": "leaky_relu"}, input_shape=(3, 8, 8))
    check_gradients(layer, batch=2)
    for result in check_layer({"type": "leaky_relu"}, (3, 8, 8)):
        assert result.ok, result.message

The conformance checks, each a function that raises AssertionError saying what is wrong:

- `check_gradients`: `backward` against central finite differences;
- `check_shapes`: `compute_output_shape` and `param_shapes` against what `forward`,
  `backward` and `build` really produce, and (declared kernel calls) what the kernels write
  against the declared output;
- `check_repeatable`: forward twice and backward twice give the same results
  (a backward accumulating into its gradients passes every check that calls it once);
- `check_compiled`: a layer declaring its kernel calls runs compiled and layer
  by layer, which agree in forward, backward, a training step and with threads;
- `check_config_round_trip`: a config dumped to JSON and validated again is the same config;
- `check_bundle_round_trip`: a small network holding the layer, saved and loaded, gives the
  same parameters and outputs, and its bundle names the layer's provider.

Declared kernel calls run bounds-checked during the checks (`make_layer` does it), so a
kernel indexing outside its arrays fails a check naming the layer and the kernel instead of
crashing. `check_layer` runs them all on one config; `check_distribution` on every layer type a
distribution provides, with the examples each layer class declares (`examples()`, below),
which is what `cnntool plugin check DIST` does.
"""

from cnntool.testing.conformance import (
    CHECKS,
    CheckResult,
    check_bundle_round_trip,
    check_config_round_trip,
    check_distribution,
    check_layer,
    layer_examples,
    make_layer,
    run_isolated,
)
from cnntool.testing.gradients import check_gradients, check_shapes
from cnntool.testing.kit import KernelIndexError, bounds_checked, check_compiled, check_repeatable

__all__ = [
    "CHECKS",
    "CheckResult",
    "KernelIndexError",
    "bounds_checked",
    "check_bundle_round_trip",
    "check_compiled",
    "check_config_round_trip",
    "check_distribution",
    "check_gradients",
    "check_layer",
    "check_repeatable",
    "check_shapes",
    "layer_examples",
    "make_layer",
    "run_isolated",
]
