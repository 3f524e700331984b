"""Datasets: load one by name, from a folder (IDX files or class folders of images) or from an
.npz, and prepare pixels.

A dataset is four arrays, class names and a JSON-safe `info` record of where it came from:
its name, source, every file's name, sha256 and size, and the split sizes.
Every reader hands raw arrays to one assembler, which checks them all the same way: images
become `(N, C, H, W)` uint8 or float32, labels `(N,)` int64 class indices, and anything
malformed is a `DataError` that names the file (and the array inside it).

Preprocessing rule. The model input is `(x * pixel_scale - mean) / std`, where `pixel_scale`
is 1/255 for raw pixels (uint8 arrays, or float arrays whose maximum exceeds 1.0) and 1.0 for
float arrays already in [0, 1]. `preprocess` decides the scale per array: uint8 (or any
integer) arrays are multiplied by the recorded `pixel_scale`, float arrays with a maximum
above 1 by 1/255, float arrays in [0, 1] are used as they are; then mean and std apply. So
the one dict recorded in a bundle serves uint8 images at inference time even when training
used floats. Call it on whole arrays or images, not on slices that could all be dark.
"""

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnntool.data.catalog import NAMED, identify, locate
from cnntool.data.folder import is_image_folder, read_image_folder
from cnntool.data.idx import IDX_FILES, IMAGES_NDIM, LABELS_NDIM, candidate_names, find_idx_files, read_idx
from cnntool.data.npz import CLASSES_KEY, read_npz
from cnntool.data.sample import PROVENANCE, SAMPLE_FILE, SAMPLE_NAME, read_sample
from cnntool.errors import DataError, checked_path

MAX_CLASSES = 10_000
ACCEPTED_SOURCES = (
    f"'{SAMPLE_NAME}' (bundled), {', '.join(repr(name) for name in NAMED)} (downloaded once), "
    f"a folder of IDX files ({', '.join(IDX_FILES.values())}, each optionally .gz), a folder "
    "with one sub-folder of images per class, or an .npz file with arrays x_train, y_train, "
    "x_test, y_test"
)
DEFAULT_PREPROCESSING = {"pixel_scale": 1 / 255, "mean": 0.0, "std": 1.0}


@dataclass
class Dataset:
    """Train and test images with integer labels, class names and provenance."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    info: dict
    # Whether the source names its classes (class folders, a named dataset, an .npz with
    # `classes`) rather than leaving them as the label numbers.
    named_classes: bool = False
    # A validation split given by the source (an image folder's val/), else None.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image, `(C, H, W)`."""
        channels, height, width = self.x_train.shape[1:]
        return int(channels), int(height), int(width)


def load_dataset(source: str | os.PathLike, *, input_shape: tuple[int, int, int] | None = None) -> Dataset:
    """Load a dataset by name (`mnist-sample`, `mnist`, `fashion-mnist`) or from a path: a
    folder of IDX files, a folder of class folders of images, or an .npz file.

    `mnist` and `fashion-mnist` come from an installed copy or the cache, downloaded on first
    use (see `cnntool.data.catalog`); any IDX folder whose files have their published
    checksums is recognised as them. `input_shape` `(C, H, W)` sets the mode and size that
    images of an image folder are converted to; other sources are returned as they are.
    """
    if isinstance(source, str) and source == SAMPLE_NAME:
        arrays, record = read_sample()
        origins = {key: f"{SAMPLE_FILE}: {key}" for key in arrays}
        return _assemble(SAMPLE_NAME, "bundled", arrays, origins, [record], PROVENANCE)
    if isinstance(source, str) and source in NAMED:
        return _load_idx_folder(locate(NAMED[source]))
    path = checked_path(source, DataError)
    if path.is_dir():
        if _has_idx_files(path):
            return _load_idx_folder(path)
        if is_image_folder(path):
            return _load_image_folder(path, input_shape)
        raise DataError(
            f"{path}: holds neither IDX files ({', '.join(IDX_FILES.values())}, each optionally .gz) "
            "nor one sub-folder of images per class"
        )
    if path.is_file() and (path.suffix.lower() == ".npz" or zipfile.is_zipfile(path)):
        return _load_npz_file(path)
    if path.is_file():
        raise DataError(
            f"{path}: not a dataset file; pass {ACCEPTED_SOURCES}. "
            "For IDX files, pass the folder that holds them"
        )
    raise DataError(f"{source}: no such dataset or path; pass {ACCEPTED_SOURCES}")


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out `floor(fraction * N)` samples, chosen by a seeded permutation, for validation.

    Returns `(x_train, y_train, x_val, y_val)`; both parts keep the original order. With
    `fraction` 0 the validation arrays are empty and the training arrays are `x` and `y`.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"Invalid value for `fraction`. Expected a float in [0, 1). Received: {fraction}")
    if len(x) != len(y):
        raise DataError(f"cannot split {len(x)} images with {len(y)} labels")
    count = int(fraction * len(x))
    if count == 0:
        return x, y, x[:0].copy(), y[:0].copy()
    order = np.random.default_rng(seed).permutation(len(x))
    val_index = np.sort(order[:count])
    train_index = np.sort(order[count:])
    return x[train_index], y[train_index], x[val_index], y[val_index]


def preprocessing_for(dataset: Dataset) -> dict:
    """The preprocessing to record for a model trained on `dataset`.

    `preprocess` picks the pixel scale per array (see the module docs), so the scaling is
    the same for uint8 and float data: `DEFAULT_PREPROCESSING`. `image_fit` says how an
    image of another size is fitted at inference (see cnntool.data.images.IMAGE_FITS): a
    plain resize for a folder of pictures, MNIST-style otherwise. `background` is the
    training images' background, onto which an input image's transparency is composited.
    """
    return {
        **DEFAULT_PREPROCESSING,
        "image_fit": dataset.info.get("image_fit", "mnist"),
        "background": background_of(dataset.x_train),
    }


def background_of(x: np.ndarray, sample: int = 1000) -> str:
    """ "dark" or "light": the median border pixel of (up to `sample` of) the images, which
    is what transparency in an input image is composited onto (cnntool.data.images)."""
    images = x[:: max(1, len(x) // sample)]
    border = np.concatenate(
        [images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], axis=-1
    ).astype(np.float32)
    return "light" if float(np.median(border)) * input_scale(x, DEFAULT_PREPROCESSING) > 0.5 else "dark"


def input_scale(x: np.ndarray, preprocessing: dict) -> float:
    """The factor taking the values of `x` to [0, 1]: the recorded `pixel_scale` for integer
    pixels, 1/255 for floats above 1, 1 for floats already in [0, 1]."""
    if x.dtype.kind in "iu":
        return float(preprocessing["pixel_scale"])
    if x.dtype.kind == "f":
        return 1 / 255 if x.size and x.max() > 1.0 else 1.0
    raise TypeError(f"preprocess expects integer or float pixels; received dtype {x.dtype}")


def preprocess(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Model input from pixels: `(x * pixel_scale - mean) / std`, float32, C-contiguous.

    uint8 (integer) arrays use the recorded `pixel_scale`; float arrays use 1/255 when their
    maximum exceeds 1.0 and 1.0 otherwise. `x` itself is never modified.
    """
    x = np.asarray(x)
    model_input = np.multiply(x, np.float32(input_scale(x, preprocessing)), dtype=np.float32, order="C")
    if preprocessing["mean"] != 0.0:
        model_input -= np.float32(preprocessing["mean"])
    if preprocessing["std"] != 1.0:
        model_input /= np.float32(preprocessing["std"])
    return model_input


def _has_idx_files(folder: Path) -> bool:
    return any((folder / name).is_file() for stem in IDX_FILES.values() for name in candidate_names(stem))


def _load_idx_folder(folder: Path) -> Dataset:
    """The four IDX files of `folder`; named after a known dataset when their checksums are its."""
    arrays, origins, records = {}, {}, []
    for key, path in find_idx_files(folder).items():
        ndim = IMAGES_NDIM if key.startswith("x") else LABELS_NDIM
        arrays[key], record = read_idx(path, ndim)
        origins[key] = str(path)
        records.append(record)
    known = identify({key: record["sha256"] for key, record in zip(origins, records, strict=True)})
    if known is None:
        return _assemble(str(folder), str(folder.absolute()), arrays, origins, records)
    arrays[CLASSES_KEY] = np.array(known.classes)
    origins[CLASSES_KEY] = f"the class names of {known.name}"
    return _assemble(known.name, str(folder), arrays, origins, records, known.provenance())


def _load_image_folder(folder: Path, input_shape: tuple[int, int, int] | None) -> Dataset:
    arrays, classes, record = read_image_folder(folder, input_shape)
    arrays[CLASSES_KEY] = np.array(classes)
    origins = {key: f"{folder}: {key}" for key in arrays}
    origins[CLASSES_KEY] = f"{folder}: class folders"
    provenance = {"images": record["images"], "image_fit": "resize"}
    return _assemble(str(folder), str(folder.absolute()), arrays, origins, record["files"], provenance)


def _load_npz_file(path: Path) -> Dataset:
    try:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
            record = {"name": path.name, "sha256": digest, "bytes": file.tell()}
            file.seek(0)
            arrays = read_npz(file, str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    origins = {key: f"{path}: {key}" for key in arrays}
    return _assemble(str(path), str(path.absolute()), arrays, origins, [record])


def _assemble(
    name: str,
    source: str,
    arrays: dict[str, np.ndarray],
    origins: dict[str, str],
    files: list[dict],
    provenance: dict | None = None,
) -> Dataset:
    """Check raw arrays from any reader and build the Dataset."""
    x_train = _images(arrays["x_train"], origins["x_train"])
    x_test = _images(arrays["x_test"], origins["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{origins['x_test']}: images have shape {x_test.shape[1:]} (C, H, W) but "
            f"{origins['x_train']} has {x_train.shape[1:]}; train and test images must match"
        )
    if x_train.dtype != x_test.dtype:
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    y_train = _labels(arrays["y_train"], origins["y_train"], len(x_train), origins["x_train"])
    y_test = _labels(arrays["y_test"], origins["y_test"], len(x_test), origins["x_test"])
    classes = _classes(arrays.get(CLASSES_KEY), origins, y_train, y_test)
    info = {
        "name": name,
        "source": source,
        "files": files,
        "train_size": len(x_train),
        "test_size": len(x_test),
        "input_shape": [int(size) for size in x_train.shape[1:]],
        **(provenance or {}),
    }
    named = arrays.get(CLASSES_KEY) is not None
    x_val = y_val = None
    if "x_val" in arrays:
        x_val = _images(arrays["x_val"], origins["x_val"]).astype(x_train.dtype, copy=False)
        y_val = _labels(arrays["y_val"], origins["y_val"], len(x_val), origins["x_val"])
        info["val_size"] = len(x_val)
    return Dataset(name, x_train, y_train, x_test, y_test, classes, info, named, x_val, y_val)


def _images(x: np.ndarray, origin: str) -> np.ndarray:
    """`(N, C, H, W)` uint8 or float32 images from `(N, H, W)` or `(N, C, H, W)` numbers."""
    if x.ndim == 3:
        x = x[:, np.newaxis]
    if x.ndim != 4:
        raise DataError(
            f"{origin}: images have {x.ndim} dimensions (shape {x.shape}); expected (N, H, W) or (N, C, H, W)"
        )
    if len(x) == 0:
        raise DataError(f"{origin}: holds no images")
    if 0 in x.shape:
        raise DataError(f"{origin}: images have an empty dimension (shape {x.shape})")
    if x.dtype.kind in "iu" and x.dtype != np.uint8:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{origin}: integer pixels must lie in 0-255; found values {low} to {high} "
                "(use floats for other ranges)"
            )
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise DataError(f"{origin}: images contain NaN or infinite values")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, origin: str, count: int, images_origin: str) -> np.ndarray:
    """`(N,)` int64 class indices, checked against the images they label."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{origin}: labels have shape {y.shape}; expected (N,) class indices "
            "(for one-hot labels pass y.argmax(axis=1))"
        )
    if y.dtype.kind == "f":
        raise DataError(
            f"{origin}: labels are floats ({y.dtype}); expected integer class indices "
            "(convert whole-number labels with y.astype(np.int64))"
        )
    if len(y) != count:
        raise DataError(f"{origin}: holds {len(y)} labels but {images_origin} holds {count} images")
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(
            f"{origin}: negative label {low} at index {int(y.argmin())}; "
            "labels are class indices 0, 1, 2, ..."
        )
    if high >= MAX_CLASSES:
        raise DataError(
            f"{origin}: label {high} at index {int(y.argmax())} is out of range; "
            f"cnntool supports up to {MAX_CLASSES} classes (labels 0 to {MAX_CLASSES - 1})"
        )
    return np.ascontiguousarray(y, dtype=np.int64)


def _classes(
    names: np.ndarray | None, origins: dict[str, str], y_train: np.ndarray, y_test: np.ndarray
) -> list[str]:
    """Class names: the given ones, else `str(i)` for i up to the largest label (at least 2)."""
    top_key = "y_train" if y_train.max() >= y_test.max() else "y_test"
    top = int(max(y_train.max(), y_test.max()))
    if names is None:
        return [str(index) for index in range(max(top + 1, 2))]
    if len(names) < 2:
        raise DataError(
            f"{origins[CLASSES_KEY]}: names {len(names)} class(es); a classifier needs at least 2"
        )
    if top >= len(names):
        raise DataError(
            f"{origins[top_key]}: label {top} is out of range for the {len(names)} classes "
            f"named in {origins[CLASSES_KEY]} (labels 0 to {len(names) - 1})"
        )
    return [str(name) for name in names]
