"""Files written whole or not at all: a temporary file beside the target, fsynced, renamed over
it. Bundles, checkpoints, exported ONNX and safetensors files, sweep results and prediction
outputs all go through `atomic_file`, so an interruption never leaves half a file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cnntool.errors import BundleError, CnntoolError, checked_path


def atomic_write(path: str | os.PathLike, data: bytes, error: type[Exception] = BundleError) -> Path:
    """Write `data` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path, error) as handle:
        handle.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, error: type[Exception] = BundleError) -> Iterator[BinaryIO]:
    """A binary file to write, which becomes `path` only when the block ends without error:
    a temporary file beside `path`, fsynced, then renamed over it. The file gets the
    permissions a new file would (0666 less the umask), unlike a mkstemp file. A failure (no
    permission, disk full, an exception in the block) leaves no temporary file and `path` as
    it was; an OSError becomes `error` (a BundleError unless told), with the path and the cause."""
    path = checked_path(path, error) if issubclass(error, CnntoolError) else Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise error(f"{path}: folder {folder} does not exist")
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise error(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise error(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
