import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


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
