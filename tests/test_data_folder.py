"""Image-folder datasets: one sub-folder of PNG/JPEG files per class."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnntool.data import load_dataset
from cnntool.data.folder import SPLIT_SEED, TEST_FRACTION
from cnntool.errors import DataError


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def gray(value: int, size=(8, 6)) -> np.ndarray:
    """A (height, width) grayscale image of one value, with a marker pixel set to 255 - value."""
    pixels = np.full((size[1], size[0]), value, np.uint8)
    pixels[0, 0] = 255 - value
    return pixels


def flat_folder(root: Path, counts: dict[str, int]) -> dict[str, list[int]]:
    """Class folders of 8x6 grayscale PNGs; each image's value identifies it."""
    values = {}
    value = 0
    for name, count in counts.items():
        values[name] = []
        for index in range(count):
            save(root / name / f"img_{index:03d}.png", gray(value))
            values[name].append(value)
            value += 1
    return values


def test_flat_folder_holds_out_a_seeded_share_of_each_class(tmp_path):
    values = flat_folder(tmp_path / "shapes", {"square": 10, "circle": 6, "triangle": 5})

    dataset = load_dataset(tmp_path / "shapes")

    assert dataset.name == str(tmp_path / "shapes")
    assert dataset.classes == ["circle", "square", "triangle"]
    assert dataset.input_shape == (1, 6, 8)
    assert dataset.x_train.dtype == np.uint8
    # round(0.2 * n) per class for testing: 1 circle, 2 squares, 1 triangle.
    assert np.bincount(dataset.y_test).tolist() == [1, 2, 1]
    assert np.bincount(dataset.y_train).tolist() == [5, 8, 4]
    # Every image lands in exactly one split, with its own label, pixels unchanged.
    seen = {}
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
        for image, label in zip(x[:, 0], y, strict=True):
            value = int(image[1, 1])
            np.testing.assert_array_equal(image, gray(value))
            seen[value] = dataset.classes[label]
    assert seen == {v: name for name, vs in values.items() for v in vs}
    # The split is that of a permutation seeded with SPLIT_SEED, per class in label order.
    rng = np.random.default_rng(SPLIT_SEED)
    expected = []
    for name in dataset.classes:
        count = round(TEST_FRACTION * len(values[name]))
        expected += sorted(values[name][i] for i in rng.permutation(len(values[name]))[:count])
    assert [int(image[0, 1, 1]) for image in dataset.x_test] == expected
    # ... and the same on every load, so train and eval agree.
    np.testing.assert_array_equal(load_dataset(tmp_path / "shapes").x_test, dataset.x_test)
    assert dataset.info["images"] == {
        "mode": "L",
        "size": [8, 6],
        "resized": 0,
        "split": "20% of each class held out (seed 0)",
    }


def test_train_and_test_folders_are_the_split(tmp_path):
    root = tmp_path / "pets"
    save(root / "train" / "dog" / "a.png", gray(1))
    save(root / "train" / "dog" / "b.png", gray(2))
    save(root / "train" / "cat" / "c.png", gray(3))
    save(root / "test" / "dog" / "d.png", gray(4))

    dataset = load_dataset(root)

    assert dataset.classes == ["cat", "dog"]
    assert dataset.y_train.tolist() == [0, 1, 1]
    assert [int(x[0, 1, 1]) for x in dataset.x_train] == [3, 1, 2]
    assert dataset.y_test.tolist() == [1]
    assert int(dataset.x_test[0, 0, 1, 1]) == 4
    assert dataset.info["images"]["split"] == "train/ and test/ folders"


def test_a_val_folder_is_the_validation_split(tmp_path):
    from cnntool.training.run import TrainingRun

    root = tmp_path / "pets"
    for part, values in (("train", (1, 2, 3, 4)), ("test", (5, 6)), ("val", (7, 8, 9))):
        for value in values:
            save(root / part / ("dog" if value % 2 else "cat") / f"{value}.png", gray(value))

    dataset = load_dataset(root)

    assert [int(x[0, 1, 1]) for x in dataset.x_val] == [8, 7, 9]
    assert dataset.y_val.tolist() == [0, 1, 1]
    assert dataset.info["val_size"] == 3
    assert dataset.info["images"]["split"] == "train/, val/ and test/ folders"
    spec = {"input_shape": [1, 6, 8], "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}
    run = TrainingRun.prepare(spec, tmp_path / "m.cnnb", {"data": str(root), "val_split": 0.5})
    assert [int(x[0, 1, 1]) for x in run.x_val] == [8, 7, 9]
    assert len(run.x_train) == 4  # nothing of train/ held out


def test_a_val_folder_needs_train_and_test_beside_it(tmp_path):
    root = tmp_path / "pets"
    save(root / "val" / "dog" / "a.png", gray(1))
    save(root / "cat" / "b.png", gray(2))
    with pytest.raises(DataError, match=r"has val/ but not both train/ and test/"):
        load_dataset(root)


def test_most_common_size_and_mode_win_and_others_are_converted(tmp_path):
    root = tmp_path / "mixed"
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200
    for index in range(3):
        save(root / "a" / f"{index}.png", rgb)  # 8x6 RGB: the most common
    save(root / "b" / "big.png", np.full((12, 16), 90, np.uint8))  # 16x12 grayscale
    save(root / "b" / "rgba.png", np.dstack([rgb, np.zeros((6, 8), np.uint8)]))  # transparent
    save(root / "b" / "photo.jpg", rgb, quality=95)

    dataset = load_dataset(root)

    assert dataset.input_shape == (3, 6, 8)
    images = np.concatenate([dataset.x_train, dataset.x_test])
    labels = np.concatenate([dataset.y_train, dataset.y_test])
    b_images = images[labels == 1]
    # The grayscale image became RGB and was resized to 8x6 (uniform, so exactly 90).
    assert any((image == 90).all() for image in b_images)
    # Transparency is flattened onto white.
    assert any((image == 255).all() for image in b_images)
    assert dataset.info["images"]["resized"] == 1
    assert dataset.info["images"]["mode"] == "RGB"


def test_input_shape_sets_mode_and_size(tmp_path):
    flat_folder(tmp_path / "f", {"x": 5, "y": 5})
    dataset = load_dataset(tmp_path / "f", input_shape=(3, 4, 4))
    assert dataset.input_shape == (3, 4, 4)
    assert dataset.x_train.flags.c_contiguous
    # Gray stays gray in all three channels.
    np.testing.assert_array_equal(dataset.x_train[:, 0], dataset.x_train[:, 2])
    with pytest.raises(
        DataError, match=r"image folders give 1 \(grayscale\) or 3 \(RGB\) channels; the model takes 2"
    ):
        load_dataset(tmp_path / "f", input_shape=(2, 4, 4))


def test_nested_folders_hidden_and_other_files(tmp_path):
    root = tmp_path / "d"
    save(root / "a" / "deeper" / "one.png", gray(10))
    save(root / "a" / ".hidden.png", gray(11))
    save(root / "a" / ".cache" / "x.png", gray(12))
    (root / "a" / "notes.txt").write_text("not an image")
    save(root / "a" / "two.png", gray(13))
    save(root / "a" / "three.png", gray(14))
    save(root / "b" / "four.PNG", gray(20))
    save(root / ".git" / "five.png", gray(30))

    dataset = load_dataset(root)

    assert dataset.classes == ["a", "b"]
    everything = np.concatenate([dataset.x_train, dataset.x_test])
    assert sorted(int(x[0, 1, 1]) for x in everything) == [10, 13, 14, 20]
    assert dataset.info["files"][0]["images"] == 4


def test_too_few_images_for_a_test_split(tmp_path):
    flat_folder(tmp_path / "d", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"d: too few images to hold out 20% of a class .*at least 3 images"):
        load_dataset(tmp_path / "d")
    save(tmp_path / "e" / "train" / "a" / "x.png", gray(1))
    save(tmp_path / "e" / "train" / "b" / "x.png", gray(1))
    (tmp_path / "e" / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"e/test: holds no images; put test images in test/<class>/"):
        load_dataset(tmp_path / "e")


def test_record_identifies_the_files(tmp_path):
    root = tmp_path / "set"
    flat_folder(root, {"a": 3, "b": 3})
    record = load_dataset(root).info["files"]
    files = sorted(p for p in root.rglob("*.png"))
    lines = "".join(
        f"{p.relative_to(root).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files
    )
    assert record == [
        {
            "name": "set",
            "sha256": hashlib.sha256(lines.encode()).hexdigest(),
            "bytes": sum(p.stat().st_size for p in files),
            "images": 6,
        }
    ]
    save(root / "b" / "img_000.png", gray(99))
    assert load_dataset(root).info["files"][0]["sha256"] != record[0]["sha256"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: save(r / "train" / "a" / "x.png", gray(1)), r"has train/ but no test/"),
        (lambda r: save(r / "only" / "x.png", gray(1)), r"found 1 class folder\(s\).*at least 2"),
        (
            lambda r: (
                save(r / "a" / "x.png", gray(1)),
                save(r / "b" / "y.png", gray(1)),
                save(r / "z.png", gray(1)),
            ),
            r"z\.png: image outside a class folder",
        ),
        (
            lambda r: (save(r / "a" / "x.png", gray(1)), (r / "b").mkdir()),
            r"/b: class folder holds no images",
        ),
        (
            lambda r: (
                save(r / "train" / "a" / "x.png", gray(1)),
                save(r / "train" / "b" / "x.png", gray(1)),
                save(r / "test" / "c" / "x.png", gray(1)),
            ),
            r"test: class folder c has no counterpart in .*train \(classes: a, b\)",
        ),
    ],
)
def test_layout_errors(tmp_path, build, message):
    root = tmp_path / "data"
    root.mkdir()
    build(root)
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_corrupt_and_truncated_images_are_named(tmp_path):
    root = tmp_path / "d"
    flat_folder(root, {"a": 3, "b": 3})
    bad = root / "b" / "img_001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"{bad}: .*(truncated|not an image)"):
        load_dataset(root)
    bad.write_text("hello")
    with pytest.raises(DataError, match=rf"{bad}: not an image Pillow can read"):
        load_dataset(root)


def test_empty_folder_is_neither_kind(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError, match=r"empty: holds neither IDX files \(train-images-idx3-ubyte, .*\) nor one"
    ):
        load_dataset(tmp_path / "empty")


def test_models_trained_on_pictures_resize_other_sizes_plainly(tmp_path):
    """A model trained on a folder of pictures records image_fit "resize": at inference an
    image of another size is resized as it is, not treated as a handwritten digit (which
    would invert, crop and centre it)."""
    import json

    import cnntool
    from cnntool.data.images import load_image
    from cnntool.inference.predict import predict_files, predict_raw
    from cnntool.training.run import TrainingRun

    rng = np.random.default_rng(0)
    for name in ("dark", "light"):
        for index in range(6):
            base = 40 if name == "dark" else 200
            save(
                tmp_path / "pics" / name / f"{index}.png",
                (base + rng.integers(0, 30, (8, 8))).astype(np.uint8),
            )
    spec = {"input_shape": [1, 8, 8], "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}
    run = TrainingRun.prepare(
        json.dumps(spec), tmp_path / "pics.cnnb", {"data": str(tmp_path / "pics"), "epochs": 1}
    )
    run.run()
    bundle = cnntool.load_bundle(tmp_path / "pics.cnnb")
    assert bundle.preprocessing["image_fit"] == "resize"

    # A light 16x16 picture: MNIST-style would invert it into a dark one.
    photo = save(tmp_path / "photo.png", np.full((16, 16), 220, np.uint8))
    resized = np.asarray(Image.open(photo).resize((8, 8), Image.Resampling.LANCZOS))[np.newaxis]
    np.testing.assert_array_equal(load_image(photo, (1, 8, 8), "resize"), resized)
    assert load_image(photo, (1, 8, 8), "mnist").max() < 100  # the digit treatment, for contrast
    [record] = predict_files(bundle, [photo])
    expected = predict_raw(bundle.network, resized[np.newaxis], bundle.preprocessing)[0]
    np.testing.assert_allclose(record["probabilities"], expected, rtol=1e-6)
