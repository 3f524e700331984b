"""Download files from mirrors into a folder: checked by sha256, resumable, with progress.

A file is fetched into `<name>.part` next to where it goes, checked (size and sha256), and only
then renamed to `<name>`, so a dataset folder never holds a half-written or wrong file under
a real name. A file already there whose sha256 does not match is fetched again. An
interrupted transfer keeps its `.part` and continues it with an HTTP Range request, from the
same mirror or the next one, in this run or the next; a server that ignores the range sends
the whole file again. Nothing is created before a mirror answers, so an offline machine is
left as it was.

Processes downloading into the same folder take turns: each holds an advisory lock (a file in
the temporary folder named after the folder's path) while it fetches, and the one that waited
finds the files already there and checked, instead of two appending to one `.part` file.

Mirrors are tried in order. One that cannot be reached (no DNS, refused, timed out) is not
asked again for the other files. Every socket operation has a short timeout
(`CNNTOOL_DOWNLOAD_TIMEOUT` seconds, default 5), so an unreachable network fails in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent downloads are not coordinated
    fcntl = None  # type: ignore[assignment]  # the module is absent there; checked before use


from cnntool import __version__
from cnntool.errors import DataError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

TIMEOUT_ENV = "CNNTOOL_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 5.0
CHUNK_BYTES = 1 << 16
# Attempts per mirror for a transfer that broke off; each continues where the last stopped.
ATTEMPTS_PER_MIRROR = 3
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class RemoteFile:
    """A published file: its name, its size and sha256 as published, and the sha256 of the
    same content in other forms (uncompressed, repackaged) that a local copy may have."""

    name: str
    bytes: int
    sha256: str
    also: tuple[str, ...] = ()

    def accepts(self, digest: str) -> bool:
        return digest == self.sha256 or digest in self.also


class DownloadError(DataError):
    """No mirror delivered a file; `partial` names a kept `.part` file, if any."""

    def __init__(self, message: str, partial: Path | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class _Unreachable(Exception):
    """The mirror did not answer: do not ask it again."""


class _Refused(Exception):
    """The mirror answered without the file (HTTP error), or sent wrong bytes."""


class _Interrupted(Exception):
    """The transfer broke off; the `.part` file keeps what arrived."""


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def download_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise DataError(f"Invalid value for {TIMEOUT_ENV}. Expected seconds > 0. Received: {value!r}")
    return seconds


def fetch(
    files: list[RemoteFile],
    mirrors: list[str],
    folder: Path,
    *,
    timeout: float | None = None,
    progress: TransferProgress | None = None,
) -> list[str]:
    """Make `folder` hold every file of `files` with its published sha256, downloading the
    missing or damaged ones from `mirrors` (base URLs, tried in order). Returns the names
    downloaded. Raises `DownloadError` saying what every mirror answered."""
    timeout = download_timeout() if timeout is None else timeout
    progress = progress or TransferProgress()
    unreachable: dict[str, str] = {}
    fetched = []
    with download_lock(folder, progress):
        for remote in files:
            target = folder / remote.name
            if target.is_file():
                if remote.accepts(sha256_of(target)):
                    continue
                progress.note(f"{target}: sha256 does not match the published one; fetching it again")
                target.unlink()
            _fetch_one(remote, mirrors, target, timeout, progress, unreachable)
            fetched.append(remote.name)
    return fetched


@contextlib.contextmanager
def download_lock(folder: Path, progress: TransferProgress):
    """Hold the lock on downloads into `folder` (waiting, with a note, while another process
    or thread holds it). The lock file lives in the temporary folder, so nothing is created
    in `folder` before a mirror answers."""
    if fcntl is None:
        yield
        return
    key = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"cnntool-download-{key}.lock"
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:  # no usable temporary folder: download without coordination
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.note(f"waiting for another download into {folder} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fetch_one(
    remote: RemoteFile,
    mirrors: list[str],
    target: Path,
    timeout: float,
    progress: TransferProgress,
    unreachable: dict[str, str],
) -> None:
    part = target.with_name(target.name + PART_SUFFIX)
    answers = [f"{base}: {reason}" for base, reason in unreachable.items() if base in mirrors]
    for base in mirrors:
        if base in unreachable:
            continue
        url = f"{base.rstrip('/')}/{remote.name}"
        for _attempt in range(ATTEMPTS_PER_MIRROR):
            try:
                resumed = _transfer(url, part, remote, timeout, progress)
            except _Unreachable as exc:
                unreachable[base] = str(exc)
                answers.append(f"{base}: {exc}")
                break
            except _Refused as exc:
                answers.append(f"{url}: {exc}")
                break
            except _Interrupted as exc:
                answers.append(f"{url}: {exc}")
                continue
            digest = sha256_of(part)
            if digest != remote.sha256:
                part.unlink()
                answers.append(f"{url}: sha256 {digest} does not match the published {remote.sha256}")
                if resumed:  # the bytes kept from before may be the wrong ones: once more, whole
                    continue
                break
            os.replace(part, target)
            return
    kept = part if part.is_file() else None
    raise DownloadError(
        f"no mirror delivered {remote.name} ({'; '.join(answers or ['no mirror given'])})", kept
    )


def _transfer(url: str, part: Path, remote: RemoteFile, timeout: float, progress: TransferProgress) -> bool:
    """Bring `part` up to `remote.bytes` bytes from `url`, continuing what it already holds;
    return whether bytes from before were kept."""
    import http.client  # here, not at the top: only downloads need the HTTP stack (start-up)
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.is_file() else 0
    if have > remote.bytes:
        part.unlink()
        have = 0
    if have == remote.bytes:
        return True
    headers = {"User-Agent": f"cnntool/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # the server cannot continue this .part: start over
            part.unlink()
            raise _Interrupted("HTTP 416 for the rest of the partial file; starting over") from None
        raise _Refused(f"HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Unreachable(_network_failure(exc, timeout)) from None
    with response:
        if have and not _continues(response, have):
            have = 0
        resumed = have > 0
        part.parent.mkdir(parents=True, exist_ok=True)
        progress.start(remote.name, url, remote.bytes, have)
        try:
            have = _copy(response, part, have, remote, timeout, progress)
        finally:
            progress.stop()
    if have < remote.bytes:
        raise _Interrupted(f"connection closed after {have} of {remote.bytes} bytes")
    return resumed


def _copy(
    response, part: Path, have: int, remote: RemoteFile, timeout: float, progress: TransferProgress
) -> int:
    """Append the response body to `part`; return the bytes `part` then holds."""
    import http.client

    try:
        out = part.open("ab" if have else "wb")
    except OSError as exc:
        raise DataError(f"cannot write {part}: {exc.strerror or exc}") from exc
    with out:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except http.client.IncompleteRead:
                break
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(
                    f"{_network_failure(exc, timeout)}; {have} of {remote.bytes} bytes arrived"
                ) from None
            if not chunk:
                break
            if have + len(chunk) > remote.bytes:
                out.close()
                part.unlink()
                raise _Refused(f"sent more than the published {remote.bytes} bytes")
            try:
                out.write(chunk)
            except OSError as exc:
                raise DataError(f"cannot write {part}: {exc.strerror or exc}") from exc
            have += len(chunk)
            progress.advance(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    return have


def _continues(response, have: int) -> bool:
    """Whether a response to a Range request carries the bytes from `have` on."""
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {have}-")


def _network_failure(exc: BaseException, timeout: float) -> str:
    import urllib.error

    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class TransferProgress:
    """Shows downloads on stderr: a rich bar per file on a terminal, else a line when each
    file starts and when it ends."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.bar: Progress | None = None  # with the task on it, on a terminal
        self.task: TaskID | None = None
        self.name = ""
        self.total = self.done = 0
        self.started = 0.0

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stderr

    def note(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def start(self, name: str, url: str, total: int, done: int) -> None:
        self.name, self.total, self.done, self.started = name, total, done, time.perf_counter()
        action = f"resuming {name} at {done / 1e6:.1f} of" if done else f"downloading {name},"
        if self.out.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(file=self.out),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(name, total=total, completed=done)
        else:
            self.note(f"{action} {total / 1e6:.1f} MB from {url}")

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None and self.task is not None:  # both or neither
            self.bar.update(self.task, completed=self.done)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        seconds = time.perf_counter() - self.started
        self.note(f"{self.name}: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB after {seconds:.1f} s")
