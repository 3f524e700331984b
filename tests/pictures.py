"""Picture folders made from real Fashion-MNIST images, as a user's own folder of photos."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion():
    """Fashion-MNIST from Debian's dataset-fashion-mnist (the tests skip without it)."""
    import cnntool

    if not FASHION.is_dir():
        pytest.skip(f"Debian package dataset-fashion-mnist is not installed ({FASHION} is missing)")
    return cnntool.load_dataset("fashion-mnist")


def picture_folder(root: Path, classes: dict[int, str], per_class: int, *, test: int = 0, val: int = 0,
                   start: int = 0) -> Path:  # fmt: skip
    """`root/<name>/*.png` (or train/, test/ and val/ with `test` or `val`) holding `per_class`
    training pictures of each Fashion-MNIST class in `classes`, taken from the images from
    index `start` on, test pictures from the test split."""
    data = fashion()
    parts = {"train": (data.x_train, data.y_train, per_class, start)}
    if test:
        parts["test"] = (data.x_test, data.y_test, test, 0)
    if val:
        parts["val"] = (data.x_train, data.y_train, val, start + 20_000)
    for part, (x, y, count, first) in parts.items():
        base = root / part if len(parts) > 1 else root
        for label, name in classes.items():
            folder = base / name
            folder.mkdir(parents=True)
            members = np.flatnonzero(y[first:] == label)[:count] + first
            for index in members:
                Image.fromarray(x[index, 0]).save(folder / f"{index}.png")
    return root
