from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pytest


def pytest_configure(config):
    # The tests use the layer types through cnntool's registry, as users do: the
    # distribution's entry points must be installed, not only its source on sys.path.
    try:
        version("cnntool-extras")
    except PackageNotFoundError:
        raise pytest.UsageError(
            "cnntool-extras is not installed; run `pip install plugins/cnntool-extras` first"
        ) from None


@pytest.fixture
def rng():
    return np.random.default_rng(7)
