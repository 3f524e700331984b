"""Inference inputs: image files turned into model pixels, and .npy arrays."""

import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cnntool.data import load_image, load_input_file
from cnntool.errors import InputError

MNIST = (1, 28, 28)


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    mass = pixels.astype(np.float64)
    rows, cols = np.indices(pixels.shape)
    return (rows * mass).sum() / mass.sum(), (cols * mass).sum() / mass.sum()


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def draw_seven(size=(300, 240)) -> Image.Image:
    """A dark 7 on white paper, well off the centre of a large canvas."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    draw.line([(30, 30), (130, 30)], fill=0, width=14)
    draw.line([(130, 30), (60, 200)], fill=0, width=14)
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Images


def test_mnist_size_png_is_used_as_it_is_by_a_resize_model(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    path = tmp_path / "digit.png"
    Image.fromarray(pixels).save(path)

    out = load_image(path, MNIST, fit="resize")

    assert out.shape == (1, 28, 28)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], pixels)


def test_large_dark_on_white_digit_is_made_mnist_style(tmp_path):
    path = tmp_path / "seven.png"
    draw_seven().save(path)

    digit = load_image(path, MNIST)[0]

    assert digit.shape == (28, 28)
    # Inverted: light ink on a black background.
    assert digit.max() == 255
    assert digit[0].max() == digit[-1].max() == digit[:, 0].max() == digit[:, -1].max() == 0
    assert (digit == 0).mean() > 0.6
    # Scaled so the longer side (the height) fills the 20-pixel box.
    height, width = ink_box(digit)
    assert 19 <= height <= 20
    assert width <= 20
    row, col = centre_of_mass(digit)
    assert abs(row - 13.5) <= 1.0
    assert abs(col - 13.5) <= 1.0


def test_light_on_dark_photo_keeps_polarity_and_loses_grey_background(tmp_path):
    image = Image.new("L", (90, 120), 40)
    ImageDraw.Draw(image).ellipse((20, 30, 60, 100), outline=220, width=8)
    path = tmp_path / "zero.jpg"
    image.save(path, quality=95)

    digit = load_image(path, MNIST)[0]

    assert digit.max() >= 250
    assert np.median(digit) == 0
    height, width = ink_box(digit > 8)
    assert 19 <= height <= 20
    assert width < height
    row, col = centre_of_mass(digit)
    assert abs(row - 13.5) <= 1.0
    assert abs(col - 13.5) <= 1.0


def test_blank_page_is_inverted_and_resized(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("L", (100, 80), 250).save(path)
    np.testing.assert_array_equal(load_image(path, MNIST), np.full(MNIST, 5, np.uint8))


def test_rgb_model_resizes_and_keeps_colour(tmp_path):
    path = tmp_path / "green.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path)

    out = load_image(path, (3, 32, 32))

    assert out.shape == (3, 32, 32)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert out[0].tolist() == np.full((32, 32), 10).tolist()
    assert out[1].tolist() == np.full((32, 32), 200).tolist()
    assert out[2].tolist() == np.full((32, 32), 30).tolist()


def test_rgb_image_of_model_size_is_used_as_it_is(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(load_image(path, (3, 16, 20)), pixels.transpose(2, 0, 1))


def test_grayscale_model_converts_colour_and_composites_alpha_onto_a_light_background(tmp_path):
    pixels = np.zeros((28, 28, 4), np.uint8)
    pixels[..., 0] = 255  # pure red ...
    pixels[:14, :, 3] = 255  # ... opaque in the top half, transparent below
    path = tmp_path / "red.png"
    Image.fromarray(pixels, "RGBA").save(path)

    out = load_image(path, MNIST, fit="resize", background="light")[0]

    assert (out[:14] == 76).all()  # ITU-R 601-2 luma of red: 0.299 * 255
    assert (out[14:] == 255).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    pixels = np.zeros((28, 28), np.uint16)
    pixels[0, :3] = [65535, 32896, 257]
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert load_image(path, MNIST, fit="resize")[0, 0, :4].tolist() == [255, 128, 1, 0]


def test_load_input_file_gives_a_batch_of_one_image(tmp_path):
    path = tmp_path / "digit.png"
    Image.new("L", (28, 28), 9).save(path)
    batch = load_input_file(path, MNIST)
    assert batch.shape == (1, 1, 28, 28)
    assert (batch == 9).all()


def test_missing_image(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        load_input_file(tmp_path / "nope.png", MNIST)
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        load_image(tmp_path / "nope.png", MNIST)
    with pytest.raises(InputError, match="a path cannot contain a NUL byte"):
        load_image("nope\x00.png", MNIST)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    draw_seven().save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match=r"cut\.png: corrupt or truncated image"):
        load_input_file(path, MNIST)


def test_corrupt_png_data(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(np.arange(784, dtype=np.uint8).reshape(28, 28)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start : start + 20] = bytes(20)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.png: corrupt or truncated image"):
        load_image(path, MNIST)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a seven, probably")
    with pytest.raises(InputError, match=r"notes\.txt: not an image Pillow can read"):
        load_input_file(path, MNIST)


def test_folder_is_not_an_input(tmp_path):
    with pytest.raises(InputError, match=r"is a folder"):
        load_input_file(tmp_path, MNIST)


def test_decompression_bomb_header_is_refused(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(1000)))
        + png_chunk(b"IEND", b"")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"bomb\.png: image too large to decode safely"):
        load_input_file(path, MNIST)


def test_image_over_the_pixel_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (40, 40), 0).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(InputError, match=r"big\.png: image too large .*1600 pixels"),
    ):
        load_image(path, MNIST)


def test_model_without_one_or_three_channels_needs_arrays(tmp_path):
    path = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(path)
    with pytest.raises(InputError, match=r"takes 4 channels.*\.npy array of shape \(4, 28, 28\)"):
        load_image(path, (4, 28, 28))


# .npy arrays


@pytest.mark.parametrize(
    ("shape", "input_shape", "batch_shape"),
    [
        ((28, 28), MNIST, (1, 1, 28, 28)),
        ((1, 28, 28), MNIST, (1, 1, 28, 28)),
        ((5, 28, 28), MNIST, (5, 1, 28, 28)),
        ((5, 1, 28, 28), MNIST, (5, 1, 28, 28)),
        ((3, 8, 6), (3, 8, 6), (1, 3, 8, 6)),
        ((2, 3, 8, 6), (3, 8, 6), (2, 3, 8, 6)),
    ],
)
def test_npy_shapes(tmp_path, shape, input_shape, batch_shape):
    array = np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) % 256
    path = tmp_path / "batch.npy"
    np.save(path, array)

    batch = load_input_file(path, input_shape)

    assert batch.shape == batch_shape
    assert batch.dtype == np.uint8
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch.ravel(), array.ravel())


def test_npy_floats_become_float32(tmp_path):
    array = np.linspace(0, 1, 784).reshape(28, 28)
    path = tmp_path / "x.npy"
    np.save(path, np.asfortranarray(array))
    batch = load_input_file(path, MNIST)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    np.testing.assert_allclose(batch[0, 0], array, rtol=1e-6)


def test_npy_found_by_content_whatever_its_name(tmp_path):
    path = tmp_path / "digits.bin"
    with path.open("wb") as file:
        np.save(file, np.full((2, 28, 28), 3, np.uint8))
    assert load_input_file(path, MNIST).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    ("array", "input_shape", "message"),
    [
        (
            np.zeros((2, 3), np.uint8),
            MNIST,
            r"array has shape \(2, 3\); expected \(1, 28, 28\) or \(N, 1, 28, 28\) or "
            r"\(28, 28\) or \(N, 28, 28\)",
        ),
        (
            np.zeros((28, 28), np.uint8),
            (3, 28, 28),
            r"array has shape \(28, 28\); expected \(3, 28, 28\) or \(N, 3, 28, 28\)$",
        ),
        (np.zeros((0, 28, 28), np.uint8), MNIST, r"array holds no inputs"),
        (np.full((28, 28), 300, np.int64), MNIST, r"integer pixels must lie in 0-255"),
        (np.full((28, 28), -1, np.int8), MNIST, r"found values -1 to -1"),
        (np.full((28, 28), np.nan), MNIST, r"NaN or infinite"),
        (np.full((28, 28), 1e300), MNIST, r"NaN or infinite"),
        (np.zeros((28, 28), bool), MNIST, r"dtype bool"),
    ],
)
def test_npy_bad_arrays(tmp_path, array, input_shape, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(InputError, match=rf"bad\.npy: .*{message}"):
        load_input_file(path, input_shape)


def test_npy_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"evil\.npy: .*holds Python objects"):
        load_input_file(path, MNIST)


def test_npy_that_is_not_npy(tmp_path):
    path = tmp_path / "fake.npy"
    path.write_text("0,1,2")
    with pytest.raises(InputError, match=r"fake\.npy: not a valid \.npy array"):
        load_input_file(path, MNIST)


def test_npy_lying_header_fails_without_allocating(tmp_path):
    path = tmp_path / "liar.npy"
    with path.open("wb") as file:
        header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1, 28, 28)}
        np.lib.format.write_array_header_1_0(file, header)
        file.write(bytes(784 * 4))

    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"liar\.npy: .*header declares shape \(1000000000,"):
            load_input_file(path, MNIST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_truncated_npy(tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"cut\.npy: .*but the file holds 3126 bytes of data"):
        load_input_file(Path(path), MNIST)
