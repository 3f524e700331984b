"""Compute kernels: pure numba functions on float32 arrays, no classes, no Python objects.

Each kernel writes into arrays its caller owns (outputs, gradients, scratch buffers), so a
training step allocates nothing. Every kernel has a plain numpy reference in the tests.
"""

from cnntool.system.numba_cache import install

# Before any kernel is defined: their cache entries then carry the kernels' digest.
install()
