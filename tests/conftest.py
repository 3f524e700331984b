import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI runs the property tests with a fixed sequence of examples (HYPOTHESIS_PROFILE=ci in
# .ci/run), so a merge is judged on the same inputs every time; a local run draws new ones
# and keeps hunting.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tools"))  # torch_graph: the same network in PyTorch


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def seed_spec_path():
    return ROOT / "models" / "seed_cnn.json"


@pytest.fixture(scope="session")
def root():
    return ROOT


def pytest_configure(config):
    os.environ.setdefault("CNNTOOL_THREADS", "2")
