"""Read .npy arrays and .npz archives of them without trusting their headers.

An .npz is a zip of .npy members. Each member's header (shape, dtype) is checked against the
bytes the zip actually holds before anything is allocated, pickled object arrays are refused,
and every failure becomes a `DataError` that names the file and the member.
"""

import io
import math
import zipfile
import zlib
from typing import BinaryIO, cast

import numpy as np
from numpy.lib import format as npy_format

from cnntool.errors import DataError

DATASET_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Optional: a 1-D array of class names (a unicode string array, so no pickle is needed).
CLASSES_KEY = "classes"


def read_npy(file: io.BufferedIOBase, size: int) -> np.ndarray:
    """Read one .npy array from `file`, which holds `size` bytes from its current position.

    The header must declare exactly as many data bytes as the file holds, so a lying header
    fails before the array is allocated. Raises ValueError with the problem in plain words.
    """
    version = npy_format.read_magic(file)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
    elif version == (2, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(file)
    else:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported")
    if dtype.hasobject:
        raise ValueError(
            "holds Python objects (pickled data), which cnntool never loads; save plain numeric arrays"
        )
    header_bytes = file.tell()
    data_bytes = math.prod(shape) * dtype.itemsize
    if data_bytes != size - header_bytes:
        raise ValueError(
            f"header declares shape {shape} of {dtype} ({data_bytes} bytes) "
            f"but the file holds {size - header_bytes} bytes of data"
        )
    buffer = bytearray(data_bytes)
    view = memoryview(buffer)
    filled = 0
    while filled < data_bytes:
        count = file.readinto(view[filled:])
        if not count:
            raise ValueError(f"data ends after {filled} of {data_bytes} bytes")
        filled += count
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def read_npz(file: BinaryIO, where: str) -> dict[str, np.ndarray]:
    """Read the dataset arrays (and `classes`, if present) from an .npz archive.

    `where` names the file in error messages. Arrays other than integers and floats are
    refused here; what the values mean is checked when the dataset is assembled.
    """
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile:
        raise DataError(
            f"{where}: not a zip archive; an .npz dataset is a zip of .npy arrays (write one with np.savez)"
        ) from None
    with archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        missing = [key for key in DATASET_KEYS if key not in members]
        if missing:
            raise DataError(
                f"{where}: missing array {', '.join(missing)}; an .npz dataset needs "
                f"{', '.join(DATASET_KEYS)} (found: {', '.join(sorted(members)) or 'nothing'})"
            )
        keys = [*DATASET_KEYS, *([CLASSES_KEY] if CLASSES_KEY in members else [])]
        arrays = {key: _read_member(archive, members[key], where, key) for key in keys}
    for key in DATASET_KEYS:
        if arrays[key].dtype.kind not in "iuf":
            raise DataError(f"{where}: {key} has dtype {arrays[key].dtype}; expected integers or floats")
    if CLASSES_KEY in arrays and (arrays[CLASSES_KEY].dtype.kind != "U" or arrays[CLASSES_KEY].ndim != 1):
        raise DataError(
            f"{where}: {CLASSES_KEY} must be a 1-D array of strings; found dtype "
            f"{arrays[CLASSES_KEY].dtype} with shape {arrays[CLASSES_KEY].shape}"
        )
    return arrays


def _read_member(archive: zipfile.ZipFile, member: str, where: str, key: str) -> np.ndarray:
    info = archive.getinfo(member)
    try:
        with archive.open(info) as file:
            return read_npy(cast(io.BufferedIOBase, file), info.file_size)  # a ZipExtFile
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{where}: array {key}: {exc}") from exc
