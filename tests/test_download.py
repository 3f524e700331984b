"""Downloads for real, from a local HTTP server started by the tests: mirrors in order, sha256
checks, partial files, resuming, timeouts, and the offline message of named datasets."""

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnntool.data import catalog as catalog_module
from cnntool.data import load_dataset
from cnntool.data.catalog import NamedDataset, locate
from cnntool.data.download import DownloadError, RemoteFile, TransferProgress, fetch
from cnntool.errors import DataError

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` by path, honouring Range, misbehaving as `server.modes` says:
    "cut" sends half the body and closes, "ignore-range" answers 200 to a Range request,
    "hang" never answers, "wrong" flips a byte, "long" adds bytes, "missing" is a 404, "slow"
    pauses half a second after the first half of the body."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        mode = server.modes.get(self.path, "ok")
        if data is None or mode == "missing":
            self.send_error(404, "Not Found")
            return
        if mode == "hang":
            server.release.wait(30)
            return
        if mode == "wrong":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if mode == "long":
            data += b"extra"
        start = 0
        ranged = self.headers.get("Range")
        if ranged and mode != "ignore-range":
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "slow":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(0.5)
            body = body[len(body) // 2 :]
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Mirror:
    """A real HTTP server on 127.0.0.1 in a thread; `url` is its base URL."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
        self.server.daemon_threads = True
        self.server.files, self.server.modes, self.server.requests = {}, {}, []
        self.server.release = threading.Event()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"

    def add(self, path: str, data: bytes, mode: str = "ok") -> None:
        self.server.files[path] = data
        self.server.modes[path] = mode

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        return self.server.requests

    def close(self) -> None:
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror():
    server = Mirror()
    yield server
    server.close()


@pytest.fixture
def closed_port_url():
    """A URL on which nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def remote(name: str, data: bytes) -> RemoteFile:
    return RemoteFile(name, len(data), hashlib.sha256(data).hexdigest())


def quiet() -> TransferProgress:
    return TransferProgress(io.StringIO())


def test_fetch_downloads_checks_and_renames(mirror, tmp_path):
    files = {"a.bin": payload(300_000, 1), "b.bin": payload(10, 2)}
    for name, data in files.items():
        mirror.add(f"/set/{name}", data)
    lines = io.StringIO()

    fetched = fetch(
        [remote(n, d) for n, d in files.items()],
        [mirror.url + "set/"],
        tmp_path / "cache",
        progress=TransferProgress(lines),
    )

    assert fetched == ["a.bin", "b.bin"]
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["a.bin", "b.bin"]
    for name, data in files.items():
        assert (tmp_path / "cache" / name).read_bytes() == data
    assert lines.getvalue().splitlines()[0] == f"downloading a.bin, 0.3 MB from {mirror.url}set/a.bin"
    assert lines.getvalue().count("downloading") == 2
    # A second run finds both files with their checksums and asks for nothing.
    before = len(mirror.requests)
    assert fetch([remote(n, d) for n, d in files.items()], [mirror.url + "set/"], tmp_path / "cache") == []
    assert len(mirror.requests) == before


def test_progress_bar_on_a_terminal(mirror, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    data = payload(200_000)
    mirror.add("/x.bin", data)
    screen = Terminal()
    fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=TransferProgress(screen))
    assert (tmp_path / "x.bin").read_bytes() == data
    assert "downloading" not in screen.getvalue()
    assert "x.bin: 0.2 of 0.2 MB after " in screen.getvalue()


def test_bad_checksum_leaves_nothing_and_says_so(mirror, tmp_path):
    data = payload(5000)
    mirror.add("/x.bin", data, "wrong")
    expected = hashlib.sha256(data).hexdigest()
    with pytest.raises(
        DownloadError,
        match=rf"no mirror delivered x\.bin \({mirror.url}x\.bin: sha256 [0-9a-f]{{64}} "
        rf"does not match the published {expected}\)",
    ) as caught:
        fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert caught.value.partial is None
    assert list(tmp_path.iterdir()) == []


def test_more_bytes_than_published_are_refused(mirror, tmp_path):
    data = payload(5000)
    mirror.add("/x.bin", data, "long")
    with pytest.raises(DownloadError, match=r"x\.bin: sent more than the published 5000 bytes"):
        fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert list(tmp_path.iterdir()) == []


def test_mirrors_are_tried_in_order(mirror, closed_port_url, tmp_path):
    data = payload(1000)
    mirror.add("/first/x.bin", data, "missing")
    mirror.add("/second/x.bin", data)
    mirrors = [closed_port_url, mirror.url + "first/", mirror.url + "second/"]

    fetch([remote("x.bin", data)], mirrors, tmp_path, progress=quiet())

    assert (tmp_path / "x.bin").read_bytes() == data
    assert [path for path, _ in mirror.requests] == ["/first/x.bin", "/second/x.bin"]


def test_unreachable_mirror_fails_fast_and_creates_nothing(closed_port_url, tmp_path):
    target = tmp_path / "cache" / "mnist"
    with pytest.raises(
        DownloadError, match=rf"no mirror delivered x\.bin \({closed_port_url}: Connection refused\)"
    ):
        fetch([remote("x.bin", b"data")], [closed_port_url], target, progress=quiet())
    assert not (tmp_path / "cache").exists()


def test_unreachable_mirror_is_not_asked_again(mirror, closed_port_url, tmp_path):
    mirror.add("/x.bin", b"x" * 10, "missing")
    mirror.add("/y.bin", b"y" * 10, "missing")
    with pytest.raises(DownloadError) as caught:
        fetch([remote("x.bin", b"x" * 10)], [closed_port_url, mirror.url], tmp_path, progress=quiet())
    assert str(caught.value) == (
        f"no mirror delivered x.bin ({closed_port_url}: Connection refused; "
        f"{mirror.url}x.bin: HTTP 404 Not Found)"
    )


def test_silent_server_times_out(mirror, tmp_path):
    mirror.add("/x.bin", b"data", "hang")
    with pytest.raises(DownloadError, match=rf"{mirror.url}: timed out after 0\.3 s"):
        fetch([remote("x.bin", b"data")], [mirror.url], tmp_path, timeout=0.3, progress=quiet())
    assert list(tmp_path.iterdir()) == []


def test_broken_transfer_is_resumed_with_a_range_request(mirror, tmp_path):
    data = payload(100_000, 3)
    mirror.add("/x.bin", data, "cut")
    # Every answer breaks off half-way: each attempt continues from the bytes kept so far.
    with pytest.raises(DownloadError, match=r"connection closed after 87500 of 100000 bytes") as caught:
        fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert [header for _, header in mirror.requests] == [None, "bytes=50000-", "bytes=75000-"]
    part = tmp_path / "x.bin.part"
    assert caught.value.partial == part
    assert part.read_bytes() == data[:87500]
    assert not (tmp_path / "x.bin").exists()

    # The next run continues the .part from where it stopped.
    mirror.server.modes["/x.bin"] = "ok"
    fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert mirror.requests[-1] == ("/x.bin", "bytes=87500-")
    assert (tmp_path / "x.bin").read_bytes() == data
    assert not part.exists()


def test_server_ignoring_the_range_sends_everything_again(mirror, tmp_path):
    data = payload(4000, 4)
    (tmp_path / "x.bin.part").write_bytes(data[:1000])
    mirror.add("/x.bin", data, "ignore-range")
    fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert mirror.requests == [("/x.bin", "bytes=1000-")]
    assert (tmp_path / "x.bin").read_bytes() == data


def test_stale_part_that_cannot_continue_starts_over(mirror, tmp_path):
    data = payload(4000, 5)
    (tmp_path / "x.bin.part").write_bytes(payload(6000, 6))  # longer than the file: discarded
    mirror.add("/x.bin", data)
    fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert mirror.requests == [("/x.bin", None)]
    assert (tmp_path / "x.bin").read_bytes() == data


def test_complete_but_wrong_part_is_fetched_again_whole(mirror, tmp_path):
    data = payload(4000, 9)
    (tmp_path / "x.bin.part").write_bytes(payload(4000, 10))  # a leftover of other bytes
    mirror.add("/x.bin", data)
    fetch([remote("x.bin", data)], [mirror.url], tmp_path, progress=quiet())
    assert mirror.requests == [("/x.bin", None)]
    assert (tmp_path / "x.bin").read_bytes() == data
    assert not (tmp_path / "x.bin.part").exists()


def test_damaged_or_partial_file_in_the_cache_is_fetched_again(mirror, tmp_path):
    good, other = payload(3000, 7), payload(200, 8)
    mirror.add("/a.bin", good)
    mirror.add("/b.bin", other)
    (tmp_path / "a.bin").write_bytes(good[:1234])  # cut short under its real name
    damaged = bytearray(other)
    damaged[10] ^= 1
    (tmp_path / "b.bin").write_bytes(bytes(damaged))
    lines = io.StringIO()

    fetched = fetch(
        [remote("a.bin", good), remote("b.bin", other)],
        [mirror.url],
        tmp_path,
        progress=TransferProgress(lines),
    )

    assert fetched == ["a.bin", "b.bin"]
    assert (tmp_path / "a.bin").read_bytes() == good
    assert (tmp_path / "b.bin").read_bytes() == other
    assert (
        f"{tmp_path / 'a.bin'}: sha256 does not match the published one; fetching it again"
        in lines.getvalue()
    )


def test_concurrent_downloads_into_one_folder_take_turns(mirror, tmp_path):
    """Two fetches of the same file into the same folder at once (threads here; processes lock
    the same way): one downloads, the other waits, then finds the file there and checked."""
    data = payload(300_000, seed=5)
    mirror.add("/big.bin", data, "slow")
    streams = [io.StringIO(), io.StringIO()]
    results = [None, None]

    def run(i: int) -> None:
        results[i] = fetch(
            [remote("big.bin", data)], [mirror.url], tmp_path, progress=TransferProgress(streams[i])
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(30)
    assert sorted(map(tuple, results)) == [(), ("big.bin",)]
    assert mirror.requests == [("/big.bin", None)]
    assert (tmp_path / "big.bin").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["big.bin"]
    waited = streams[results.index([])].getvalue()
    assert f"waiting for another download into {tmp_path} to finish" in waited


@pytest.mark.parametrize("value", ["0", "soon", "-1"])
def test_bad_timeout_setting(monkeypatch, tmp_path, value):
    monkeypatch.setenv("CNNTOOL_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(
        DataError,
        match=rf"Invalid value for CNNTOOL_DOWNLOAD_TIMEOUT. Expected seconds > 0. Received: '{value}'",
    ):
        fetch([remote("x.bin", b"x")], ["http://127.0.0.1:9/"], tmp_path)


# Named datasets, with the catalog's mirrors replaced by the local server


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return gzip.compress(header + array.tobytes(), mtime=0)


@pytest.fixture
def tiny_named(monkeypatch, tmp_path):
    """A named dataset `tiny` of four small IDX files, served by `mirror`, cached in tmp_path."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 6, 5), dtype=np.uint8),
        "y_train": np.arange(30, dtype=np.uint8) % 3,
        "x_test": rng.integers(0, 256, (9, 6, 5), dtype=np.uint8),
        "y_test": np.arange(9, dtype=np.uint8) % 3,
    }
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    blobs = {f"{stems[role]}.gz": idx_gz(array) for role, array in arrays.items()}
    entry = NamedDataset(
        name="tiny",
        description="a test set",
        classes=("red", "green", "blue"),
        files={role: remote(f"{stems[role]}.gz", blobs[f"{stems[role]}.gz"]) for role in arrays},
        mirrors=("http://127.0.0.1:9/never-used/",),
        homepage="https://example.org/tiny",
        license="CC0",
        train_size=30,
        test_size=9,
        input_shape=(1, 6, 5),
    )
    monkeypatch.setitem(catalog_module.NAMED, "tiny", entry)
    monkeypatch.setenv("CNNTOOL_DATA_DIR", str(tmp_path / "data"))
    return entry, blobs, arrays


def test_named_dataset_is_downloaded_once_then_loaded_from_the_cache(
    mirror, tiny_named, monkeypatch, tmp_path
):
    entry, blobs, arrays = tiny_named
    for name, blob in blobs.items():
        mirror.add(f"/tiny/{name}", blob)
    monkeypatch.setenv("CNNTOOL_DATASET_MIRRORS", f"http://127.0.0.1:9/ {mirror.url}")

    dataset = load_dataset("tiny")

    folder = tmp_path / "data" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted(blobs)
    assert dataset.name == "tiny"
    assert dataset.classes == ["red", "green", "blue"]
    np.testing.assert_array_equal(dataset.x_test[:, 0], arrays["x_test"])
    assert dataset.info["source"] == str(folder)
    assert dataset.info["origin"] == "https://example.org/tiny"
    assert [(f["name"], f["sha256"], f["bytes"]) for f in dataset.info["files"]] == [
        (r.name, r.sha256, r.bytes) for r in entry.files.values()
    ]
    requests = len(mirror.requests)
    assert load_dataset("tiny").classes == ["red", "green", "blue"]
    assert len(mirror.requests) == requests


def test_named_dataset_offline_message(tiny_named, closed_port_url, monkeypatch, tmp_path):
    entry, _, _ = tiny_named
    monkeypatch.setenv("CNNTOOL_DATASET_MIRRORS", closed_port_url)
    cache = tmp_path / "data" / "tiny"
    with pytest.raises(DataError) as caught:
        load_dataset("tiny")
    message = str(caught.value)
    assert message.startswith(
        f"cannot download dataset 'tiny': no mirror delivered train-images-idx3-ubyte.gz "
        f"({closed_port_url}tiny/: Connection refused). It needs "
    )
    assert message.endswith(
        f"; download them elsewhere and pass their folder with --data PATH, or put them in {cache}"
    )
    needed = ", ".join(f"{r.name} (sha256 {r.sha256})" for r in entry.files.values())
    assert f"It needs {needed}; " in message
    assert not (tmp_path / "data").exists()


def test_folder_with_the_published_files_is_recognised(tiny_named, tmp_path):
    _, blobs, _ = tiny_named
    folder = tmp_path / "somewhere"
    folder.mkdir()
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    dataset = load_dataset(folder)
    assert dataset.name == "tiny"
    assert dataset.classes == ["red", "green", "blue"]
    assert dataset.info["source"] == str(folder)
    # Changed data is no longer that dataset.
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_gz(np.zeros(9, np.uint8)))
    assert load_dataset(folder).name == str(folder)


def test_installed_copy_is_used_and_a_damaged_one_is_named(tiny_named, mirror, monkeypatch, tmp_path):
    entry, blobs, _ = tiny_named
    system = tmp_path / "usr-share"
    system.mkdir()
    for name, blob in blobs.items():
        (system / name).write_bytes(blob)
    monkeypatch.setitem(
        catalog_module.NAMED,
        "tiny",
        dataclasses.replace(entry, system_folders=(system,), system_package="dataset-tiny"),
    )
    monkeypatch.setenv("CNNTOOL_DATASET_MIRRORS", mirror.url)

    assert locate(catalog_module.NAMED["tiny"]) == system
    assert mirror.requests == []

    (system / "train-labels-idx1-ubyte.gz").write_bytes(b"nonsense")
    with pytest.raises(DataError) as caught:
        load_dataset("tiny")
    message = str(caught.value)
    assert "or install the Debian package dataset-tiny" in message
    assert message.endswith(
        f". {system} was not used: train-labels-idx1-ubyte.gz has sha256 "
        f"{hashlib.sha256(b'nonsense').hexdigest()}, expected {entry.files['y_train'].sha256}"
    )


def test_cli_offline_download_is_one_line_and_exit_1(closed_port_url, tmp_path, root):
    env = {
        **os.environ,
        "CNNTOOL_DATA_DIR": str(tmp_path / "data"),
        "CNNTOOL_DATASET_MIRRORS": closed_port_url,
    }
    for args in (
        ["data", "download", "mnist"],
        ["train", "models/seed_cnn.json", "--data", "mnist", "--out", str(tmp_path / "m.cnnb")],
    ):
        result = subprocess.run(
            [CNNTOOL, *args], capture_output=True, text=True, env=env, timeout=120, cwd=root
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(
            "error: cannot download dataset 'mnist': no mirror delivered train-images-idx3-ubyte.gz "
            f"({closed_port_url}mnist/: Connection refused). It needs train-images-idx3-ubyte.gz "
            "(sha256 440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609)"
        )
        assert "pass their folder with --data PATH" in lines[0]
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "m.cnnb").exists()
