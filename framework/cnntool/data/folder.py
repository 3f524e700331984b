"""Image-folder datasets: one sub-folder of pictures per class, for training on your own images.

    photos/                    photos/
      cat/  a.png b.jpg  ...     train/  cat/ ...  dog/ ...
      dog/  c.png ...            test/   cat/ ...  dog/ ...
                                 val/    cat/ ...  dog/ ...   (optional)

Class names are the sub-folder names, sorted; a class's label is its index in that list.
Images may sit in nested folders inside their class folder; hidden files and files that are
not images (by suffix) are skipped, and an image outside any class folder is an error.

The test split is `test/` when the folder has `train/` and `test/`; otherwise TEST_FRACTION of
each class is held out, chosen by a permutation seeded with SPLIT_SEED. A `val/` folder beside
them is the validation split (training then holds out nothing of train/). The split depends on
the files alone, so `cnntool train` and `cnntool eval` see the same one.

Every image is decoded (EXIF rotation applied, transparency flattened onto white) and
converted to one mode and size: those of `input_shape` when given (1 channel: grayscale "L",
3: "RGB"), else the most common among the training images (a tie goes to RGB and to the
larger size). Other sizes are resized with Lanczos resampling, not keeping the aspect ratio.
A file that cannot be read or decoded is a `DataError` naming it.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from cnntool.data.images import decode_image
from cnntool.errors import DataError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
GRAYSCALE_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def is_image_folder(folder: Path) -> bool:
    """Whether `folder` looks like an image-folder dataset: it has a visible sub-folder."""
    return any(child.is_dir() and not child.name.startswith(".") for child in folder.iterdir())


def read_image_folder(
    root: Path, input_shape: tuple[int, int, int] | None = None
) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """The arrays (x_train, y_train, x_test, y_test), class names and a record of the folder."""
    train_files, test_files, val_files, classes, split = _list_files(root)
    if input_shape is not None:
        channels, height, width = input_shape
        if channels not in (1, 3):
            raise DataError(
                f"{root}: image folders give 1 (grayscale) or 3 (RGB) channels; the model takes {channels}"
            )
        mode, size = ("L" if channels == 1 else "RGB"), (width, height)
    else:
        mode, size = _most_common_format([path for path, _ in train_files])
    digests: list[str] = []
    total_bytes = 0
    arrays, converted = {}, 0
    parts = [("train", train_files), ("test", test_files)] + ([("val", val_files)] if val_files else [])
    for part, files in parts:
        x = np.empty((len(files), 1 if mode == "L" else 3, size[1], size[0]), np.uint8)
        for index, (path, _) in enumerate(files):
            data = _read(path)
            digests.append(f"{path.relative_to(root).as_posix()}\t{hashlib.sha256(data).hexdigest()}\n")
            total_bytes += len(data)
            x[index], resized = _pixels(data, path, mode, size)
            converted += resized
        arrays[f"x_{part}"] = x
        arrays[f"y_{part}"] = np.array([label for _, label in files], dtype=np.int64)
    manifest = hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
    record = {
        "name": root.name or str(root),
        "sha256": manifest,
        "bytes": total_bytes,
        "images": len(train_files) + len(test_files) + len(val_files),
    }
    layout = {"mode": mode, "size": [size[0], size[1]], "resized": converted, "split": split}
    return arrays, classes, {"files": [record], "images": layout}


def _list_files(root: Path) -> tuple[list, list, list, list[str], str]:
    """(path, label) pairs for training, testing and validation (empty without val/), the
    class names, and how it was split."""
    split_dirs = {name: root / name for name in ("train", "test") if (root / name).is_dir()}
    val_dir = root / "val"
    if val_dir.is_dir() and len(split_dirs) != 2:
        raise DataError(
            f"{root}: has val/ but not both train/ and test/; a validation folder goes beside train/ "
            "and test/ (each with one sub-folder per class)"
        )
    if len(split_dirs) == 1:
        (present,) = split_dirs
        other = "test" if present == "train" else "train"
        raise DataError(
            f"{root}: has {present}/ but no {other}/; give both (each with one sub-folder per class), "
            "or put the class folders directly in it to hold out a test share automatically"
        )
    if split_dirs:
        classes = _class_names(split_dirs["train"])
        train = _class_files(split_dirs["train"], classes, require_images=True)
        test_classes = _class_names(split_dirs["test"], minimum=0)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(
                f"{split_dirs['test']}: class folder {', '.join(unknown)} has no counterpart in "
                f"{split_dirs['train']} (classes: {', '.join(classes)})"
            )
        test = _class_files(split_dirs["test"], test_classes, labels=classes)
        if not test:
            raise DataError(f"{split_dirs['test']}: holds no images; put test images in test/<class>/")
        if not val_dir.is_dir():
            return train, test, [], classes, "train/ and test/ folders"
        val_classes = _class_names(val_dir, minimum=0)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise DataError(
                f"{val_dir}: class folder {', '.join(unknown)} has no counterpart in {split_dirs['train']} "
                f"(classes: {', '.join(classes)})"
            )
        val = _class_files(val_dir, val_classes, labels=classes)
        if not val:
            raise DataError(f"{val_dir}: holds no images; put validation images in val/<class>/")
        return train, test, val, classes, "train/, val/ and test/ folders"
    classes = _class_names(root)
    everything = _class_files(root, classes, require_images=True)
    train, test = _hold_out(everything, len(classes))
    if not test:
        raise DataError(
            f"{root}: too few images to hold out {TEST_FRACTION:.0%} of a class for testing (a class "
            "needs at least 3 images); add images, or give train/ and test/ folders"
        )
    return train, test, [], classes, f"{TEST_FRACTION:.0%} of each class held out (seed {SPLIT_SEED})"


def _class_names(folder: Path, minimum: int = 2) -> list[str]:
    names = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            names.append(child.name)
        elif child.suffix.lower() in IMAGE_SUFFIXES:
            raise DataError(
                f"{child}: image outside a class folder; put each image in a sub-folder named after its class"
            )
    if len(names) < minimum:
        raise DataError(
            f"{folder}: found {len(names)} class folder(s); an image-folder dataset has one sub-folder "
            f"per class, at least {minimum}"
        )
    return names


def _class_files(
    folder: Path, names: list[str], *, labels: list[str] | None = None, require_images: bool = False
) -> list[tuple[Path, int]]:
    """Every image under each class folder, sorted by path, with its label."""
    labels = labels or names
    files = []
    for name in names:
        found = sorted(
            path
            for path in (folder / name).rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
        if require_images and not found:
            raise DataError(f"{folder / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += [(path, labels.index(name)) for path in found]
    return files


def _hold_out(files: list[tuple[Path, int]], classes: int) -> tuple[list, list]:
    """Split each class: round(TEST_FRACTION * n) for testing (at least one left to train)."""
    rng = np.random.default_rng(SPLIT_SEED)
    train: list[tuple[Path, int]] = []
    test: list[tuple[Path, int]] = []
    for label in range(classes):
        members = [item for item in files if item[1] == label]
        count = min(round(TEST_FRACTION * len(members)), len(members) - 1)
        chosen = set(rng.permutation(len(members))[:count].tolist())
        for index, item in enumerate(members):
            (test if index in chosen else train).append(item)
    return train, test


def _most_common_format(paths: list[Path]) -> tuple[str, tuple[int, int]]:
    """The most common mode ("L" or "RGB") and size (width, height), from the file headers."""
    modes: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    for path in paths:
        try:
            with Image.open(path) as image:
                modes["L" if image.mode in GRAYSCALE_MODES else "RGB"] += 1
                sizes[image.size] += 1
        except Image.DecompressionBombError as exc:
            raise DataError(f"{path}: image too large to decode safely ({exc})") from None
        except Exception as exc:  # Pillow raises many types for unreadable headers
            raise DataError(f"{path}: not an image Pillow can read ({exc})") from exc
    mode = max(modes, key=lambda name: (modes[name], name == "RGB"))
    size = max(sizes, key=lambda size: (sizes[size], size[0] * size[1], size))
    return mode, size


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _pixels(data: bytes, path: Path, mode: str, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """`(C, H, W)` uint8 pixels of one image in `mode` and `size`, and whether it was resized."""
    try:
        image = decode_image(io.BytesIO(data), str(path), mode)
    except InputError as exc:
        raise DataError(str(exc)) from None
    resized = image.size != size
    if resized:
        image = image.resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(image)
    return (pixels[np.newaxis] if mode == "L" else pixels.transpose(2, 0, 1)), resized
