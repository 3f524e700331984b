"""Read IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, a data-type byte, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order. Files may be
gzip-compressed. The declared dimensions are checked against the bytes actually present
before the array is built, so a lying header fails fast instead of allocating.
"""

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cnntool.errors import DataError

# The IDX data-type byte. cnntool reads unsigned bytes, which is what image datasets use;
# the others are named so the refusal says what the file holds.
IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
UNSIGNED_BYTE = 0x08
IMAGES_NDIM = 3
LABELS_NDIM = 1

# Dataset role -> file name stem, as published for MNIST.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 24


def candidate_names(stem: str) -> list[str]:
    """File names accepted for one IDX file, uncompressed first (`-idx3` or `.idx3`, `.gz`)."""
    dotted = stem.replace("-idx", ".idx")
    return [stem, dotted, f"{stem}.gz", f"{dotted}.gz"]


def find_idx_files(folder: Path) -> dict[str, Path]:
    """The four IDX files in `folder`, by dataset role; all missing ones are named at once."""
    found: dict[str, Path] = {}
    missing = []
    for role, stem in IDX_FILES.items():
        paths = [folder / name for name in candidate_names(stem)]
        existing = [path for path in paths if path.is_file()]
        if existing:
            found[role] = existing[0]
        else:
            missing.append(f"{stem}[.gz]")
    if missing:
        raise DataError(
            f"{folder}: missing IDX file {', '.join(missing)}; a dataset folder holds "
            f"{', '.join(IDX_FILES.values())} (each optionally .gz, '.idx' also accepted)"
        )
    return found


def read_idx(path: Path, ndim: int) -> tuple[np.ndarray, dict]:
    """Read an unsigned-byte IDX file of `ndim` dimensions, plain or gzip-compressed.

    Returns the array (uint8, writable, sharing the read buffer) and the file's record
    `{"name", "sha256", "bytes"}` for dataset provenance.
    """
    header_bytes = 4 + 4 * ndim
    data: bytearray | memoryview  # read from gzip, or a view of the plain file's bytes
    try:
        with path.open("rb") as file:
            compressed = file.read(len(GZIP_MAGIC)) == GZIP_MAGIC
            file.seek(0)
            if compressed:
                digest = hashlib.file_digest(file, "sha256")
                size = file.tell()
                file.seek(0)
                header, data = _read_gzip(path, file, ndim)
            else:
                raw = bytearray(os.fstat(file.fileno()).st_size)
                del raw[file.readinto(raw) :]
                digest, size = hashlib.sha256(raw), len(raw)
                header = _parse_header(path, bytes(raw[:header_bytes]), ndim)
                data = memoryview(raw)[header_bytes:]
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    expected = math.prod(header)
    if len(data) != expected:
        dims = " x ".join(str(dim) for dim in header)
        amount = f"more than {expected}" if len(data) > expected else f"only {len(data)}"
        raise DataError(
            f"{path}: header declares {dims} values ({expected} bytes) but the file holds "
            f"{amount} bytes of data; the file is truncated or its header is wrong"
        )
    record = {"name": path.name, "sha256": digest.hexdigest(), "bytes": size}
    return np.frombuffer(data, dtype=np.uint8).reshape(header), record


def _read_gzip(path: Path, file: BinaryIO, ndim: int) -> tuple[tuple[int, ...], bytearray]:
    """The header and at most one byte more data than it declares, so memory follows the
    data actually present, never the header."""
    try:
        with gzip.GzipFile(fileobj=file) as stream:
            header = _parse_header(path, stream.read(4 + 4 * ndim), ndim)
            limit = math.prod(header) + 1
            data = bytearray()
            while len(data) < limit:
                chunk = stream.read(min(CHUNK_BYTES, limit - len(data)))
                if not chunk:
                    break
                data += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return header, data


def _parse_header(path: Path, header: bytes, ndim: int) -> tuple[int, ...]:
    """Check the magic number of an IDX header and return its dimensions."""
    expected_magic = UNSIGNED_BYTE << 8 | ndim
    what = "images" if ndim == IMAGES_NDIM else "labels"
    magic = header[:4]
    if len(magic) < 4 or magic[:2] != b"\0\0":
        raise DataError(
            f"{path}: not an IDX file (magic number {magic.hex() or 'missing'}); "
            f"expected 0x{expected_magic:08x} (IDX {what})"
        )
    type_code, file_ndim = magic[2], magic[3]
    if type_code != UNSIGNED_BYTE:
        name = IDX_TYPES.get(type_code, "unknown")
        raise DataError(
            f"{path}: IDX data type 0x{type_code:02x} ({name}) is not supported; "
            "cnntool reads unsigned-byte (0x08) IDX files"
        )
    if file_ndim != ndim:
        raise DataError(
            f"{path}: wrong magic number 0x{int.from_bytes(magic):08x} ({file_ndim} "
            f"dimensions); expected 0x{expected_magic:08x} (IDX {what}, {ndim} dimensions)"
        )
    if len(header) != 4 + 4 * ndim:
        raise DataError(f"{path}: file ends inside the IDX header")
    return tuple(int(size) for size in np.frombuffer(header[4:], dtype=">u4"))
