"""Batch inference over many inputs, in this process or on Ray Data, with the same rows.

The inputs (images, folders searched recursively for images, .npy and .npz arrays, IDX files)
are cut into *pieces*: an image is a piece of one example, an array pieces of at most
`batch_size` examples (their count read from the file's header). Consecutive pieces are grouped
into *tasks* of at most `batch_size` examples, and a task is one call of the network. Here the
tasks run one after another; on Ray each task is one row of a Ray Data dataset mapped by a pool
of actors that each load the bundle once. Both run the same `TaskRunner`, which reads the files
itself, so only a list of file names and ranges crosses the cluster, and what comes back is the
rows.

A row: `input` (the file), `item` (the index within an array; None for an image), `index`,
`label` and `probability` of the top class, `probabilities`, and `error` (None, or why the
input could not be read; the prediction fields are then None). Memory stays bounded by one
task's examples and the largest input file, whatever the number of inputs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import socket
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
from numpy.lib import format as npy_format

from cnntool.bundle import load_bundle, load_bundle_bytes
from cnntool.data import load_input_file, preprocess
from cnntool.data.idx import IMAGES_NDIM, read_idx
from cnntool.data.images import input_batch
from cnntool.data.npz import read_npy
from cnntool.errors import CnntoolError, InputError, checked_path
from cnntool.inference.warmup import warm_up
from cnntool.model.network import MIN_EXAMPLES_PER_THREAD
from cnntool.system.files import atomic_file
from cnntool.system.threads import available_cpus, set_threads

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = {".npy": "npy", ".npz": "npz"}
# In an .npz of several arrays, the one inferred on (a dataset .npz holds x_train and x_test).
NPZ_KEYS = ("x_test", "x")
RAY_HINT = "install the Ray extra: pip install 'cnntool[ray]'"
# An example's probabilities depend, in the last bits, on the size of the piece of a batch it is
# computed in, and the network cuts a batch into one piece per thread. Calls this small are
# never cut, so the rows are the same whatever the thread count: here, or on Ray workers with
# fewer threads each. (Their matrix products are too small for threads to pay anyway.)
UNCUT = 2 * MIN_EXAMPLES_PER_THREAD - 1


class Piece(NamedTuple):
    """Examples `start` to `stop` of one input (`stop` None: all of it, count unknown)."""

    input: str
    kind: str
    start: int = 0
    stop: int | None = None


# --- inputs to tasks --------------------------------------------------------------------


def input_kind(path: Path) -> str:
    """How a file is read: "image", "npy", "npz" or "idx" (by its name)."""
    name = path.name.lower()
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return ARRAY_SUFFIXES[path.suffix.lower()]
    if ("idx" in name and "ubyte" in name) or name.endswith((".idx3", ".idx3.gz")):
        return "idx"
    return "image"


def expand_inputs(paths: list[Path]) -> Iterator[Piece]:
    """One whole-input piece per file, folders replaced by their images (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                yield Piece(str(path), "empty folder")
            yield from (Piece(str(image), "image") for image in images)
        else:
            yield Piece(str(path), input_kind(path))


def count_examples(piece: Piece, input_shape: tuple[int, int, int]) -> int | None:
    """The number of examples in an input from its header alone (None when it cannot tell,
    then the reader reports why)."""
    if piece.kind == "image":
        return 1
    try:
        if piece.kind == "npy":
            with open(piece.input, "rb") as file:
                shape = npy_shape(file)
        elif piece.kind == "npz":
            with (
                zipfile.ZipFile(piece.input) as archive,
                archive.open(npz_member(archive, piece.input)) as file,
            ):
                shape = npy_shape(file)
        elif piece.kind == "idx":
            with open(piece.input, "rb") as file:
                compressed = file.read(2) == b"\x1f\x8b"
                file.seek(0)
                stream = gzip.GzipFile(fileobj=file) if compressed else file
                header = stream.read(8)
            shape = (int.from_bytes(header[4:8], "big"), 0, 0) if len(header) == 8 else ()
        else:
            return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, CnntoolError):
        return None
    channels = input_shape[0]
    if len(shape) == 4 or (channels == 1 and len(shape) == 3):
        return int(shape[0])
    return 1 if len(shape) in (2, 3) else None


def npy_shape(file: Any) -> tuple[int, ...]:

    version = npy_format.read_magic(file)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    return tuple(read_header(file)[0])


def npz_member(archive: zipfile.ZipFile, where: str) -> str:
    """The member of an .npz inferred on: its only array, else x_test, else x."""
    members = {name.removesuffix(".npy"): name for name in archive.namelist()}
    if len(members) == 1:
        return next(iter(members.values()))
    for key in NPZ_KEYS:
        if key in members:
            return members[key]
    raise InputError(
        f"{where}: holds arrays {', '.join(sorted(members)) or 'none'}; infer reads an .npz with one "
        f"array, or its {' or '.join(NPZ_KEYS)}"
    )


def make_tasks(paths: list[Path], input_shape: tuple[int, int, int], batch_size: int) -> list[list[Piece]]:
    """Every input cut into pieces and grouped, in order, into tasks of at most `batch_size`
    examples."""
    tasks: list[list[Piece]] = []
    task: list[Piece] = []
    size = 0
    for whole in expand_inputs(paths):
        count = count_examples(whole, input_shape)
        if count is None:
            pieces = [whole]
        else:
            pieces = [
                whole._replace(start=start, stop=min(start + batch_size, count))
                for start in range(0, count, batch_size)
            ]
        for piece in pieces:
            examples = 1 if piece.stop is None else piece.stop - piece.start
            if task and size + examples > batch_size:
                tasks.append(task)
                task, size = [], 0
            task.append(piece)
            size += examples
    if task:
        tasks.append(task)
    return tasks


def task_examples(task: list[Piece]) -> int:
    return sum(1 if piece.stop is None else piece.stop - piece.start for piece in task)


# --- tasks to rows ----------------------------------------------------------------------


class InputReader:
    """Model input for pieces, keeping the last file read, so the pieces of one array cost one
    read. A float array's value scale is decided on the whole file (see `preprocess`), so it is
    preprocessed whole; uint8 pixels piece by piece."""

    def __init__(self, input_shape: tuple[int, int, int], preprocessing: dict) -> None:
        self.input_shape = cast("tuple[int, int, int]", tuple(input_shape))  # a tuple of the given
        self.preprocessing = preprocessing
        self.cached: tuple[str, np.ndarray | CnntoolError] | None = None

    def model_input(self, piece: Piece) -> np.ndarray:

        if self.cached is None or self.cached[0] != piece.input:
            try:
                batch = self.load(piece)
                if batch.dtype != np.uint8:
                    batch = preprocess(batch, self.preprocessing)
                self.cached = (piece.input, batch)
            except CnntoolError as exc:
                self.cached = (piece.input, exc)
        held = self.cached[1]
        if isinstance(held, CnntoolError):
            raise held
        part = held[piece.start : piece.stop]
        return preprocess(part, self.preprocessing) if part.dtype == np.uint8 else part

    def load(self, piece: Piece) -> np.ndarray:
        """The whole input as a batch (N, C, H, W), uint8 or float32, its values checked."""

        path = checked_path(piece.input, InputError)
        if piece.kind == "empty folder":
            raise InputError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if piece.kind == "idx":
            if not path.is_file():
                raise InputError(f"{path}: file not found")
            return input_batch(read_idx(path, IMAGES_NDIM)[0], self.input_shape, str(path))
        if piece.kind == "npz":
            try:
                with zipfile.ZipFile(path) as archive:
                    info = archive.getinfo(npz_member(archive, str(path)))
                    with archive.open(info) as file:
                        array = read_npy(cast(io.BufferedIOBase, file), info.file_size)  # a ZipExtFile
            except FileNotFoundError:
                raise InputError(f"{path}: file not found") from None
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise InputError(f"{path}: not a valid .npz of arrays: {exc}") from None
            return input_batch(array, self.input_shape, str(path))
        preprocessing = self.preprocessing
        return load_input_file(
            path, self.input_shape, preprocessing.get("image_fit", "mnist"), preprocessing.get("background")
        )


class TaskRunner:
    """Rows for tasks, with one loaded bundle: every readable input predicted, every other one
    an error row."""

    def __init__(self, bundle: Any) -> None:
        self.net = bundle.network
        self.reader = InputReader(self.net.input_shape, bundle.preprocessing)

    def __call__(self, task: list[Piece]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        inputs, predicted = [], []
        for piece in task:
            try:
                x = self.reader.model_input(piece)
            except CnntoolError as exc:
                if piece.start == 0:  # an input is one error row, however many pieces it was cut into
                    rows.append(error_row(piece.input, str(exc)))
                continue
            several = piece.kind != "image" or len(x) > 1
            for offset in range(len(x)):
                predicted.append(len(rows))
                rows.append({"input": piece.input, "item": piece.start + offset if several else None})
            inputs.append(x)
        if inputs:
            x = np.concatenate(inputs)
            probabilities = np.concatenate(
                [self.net.predict_proba(x[start : start + UNCUT]) for start in range(0, len(x), UNCUT)]
            )
            classes = self.net.classes
            for position, row in zip(predicted, probabilities, strict=True):
                best = int(np.argmax(row))
                rows[position].update(
                    index=best,
                    label=classes[best],
                    probability=float(row[best]),
                    probabilities=[float(p) for p in row],
                    error=None,
                )
        return rows


def error_row(source: str, message: str) -> dict[str, Any]:
    return {
        "input": source,
        "item": None,
        "index": None,
        "label": None,
        "probability": None,
        "probabilities": None,
        "error": message,
    }


def run_here(bundle: Any, tasks: list[list[Piece]]) -> Iterator[list[dict[str, Any]]]:
    """The rows of each task, in order, computed in this process."""
    runner = TaskRunner(bundle)
    for task in tasks:
        yield runner(task)


# --- Ray --------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        # the Ray extra is optional: imported where it is used
        import ray
        import ray.data
    except ImportError:
        raise CnntoolError(f"Ray is not installed; {RAY_HINT}") from None
    return ray


@contextmanager
def ray_cluster(address: str | None) -> Iterator[Any]:
    """Ray, connected to the cluster at `address` (else RAY_ADDRESS), or to a local cluster
    started for the block and stopped after it; a Ray already initialised in this process is
    used as it is."""

    ray = import_ray()
    # Ray's own notes (deprecated settings inside Ray, execution plans) are not the user's business.
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    for name in ("ray", "ray.data", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        yield ray
        return

    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **options)
        else:
            ray.init(address="local", num_cpus=available_cpus(), include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CnntoolError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at `address`
    (host:port, or ray://host:port); "auto" and other forms are left to Ray."""

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise CnntoolError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head` and pass the address it prints, or leave out --ray-address and RAY_ADDRESS "
            "for a local cluster"
        ) from None


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def worker_threads(cpus: int, workers: int) -> int:
    """Threads per worker so that workers x threads does not exceed the cluster's CPUs."""
    if workers > cpus:
        raise CnntoolError(
            f"--workers {workers} is more than the {cpus} CPUs of the Ray cluster; pass --workers {cpus} "
            "or fewer (each worker needs a CPU of its own)"
        )
    return max(1, cpus // workers)


class RayTaskRunner:
    """A Ray Data actor: loads the bundle once, sets its threads, then maps task rows to rows."""

    def __init__(self, bundle: list, threads: int) -> None:
        # the Ray extra is optional: imported where it is used
        import ray

        set_threads(threads)
        # The bundle's bytes are in Ray's object store, once for all workers; the reference
        # comes inside a list so that Ray hands it over as it is.
        self.runner = TaskRunner(load_bundle_bytes(ray.get(bundle[0]), "<bundle>"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for text in batch["task"]:
            task = [Piece(*piece) for piece in json.loads(str(text))]
            results.append(json.dumps(self.runner(task)))
        return {"rows": np.array(results, dtype=object)}


def run_on_ray(
    bundle_path: Path,
    tasks: list[list[Piece]],
    *,
    workers: int | None,
    address: str | None,
    batch_size: int,
    on_ready: Callable[[str], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The rows of each task, in order, computed by an actor pool on Ray Data. The kernel
    cache is warmed here first, so the workers load compiled kernels instead of compiling.
    `on_ready` is told, in words, the cluster and the pool once Ray is up."""

    started = time.perf_counter()
    with ray_cluster(address) as ray:
        cpus = cluster_cpus(ray)
        workers = workers or cpus
        threads = worker_threads(cpus, workers)
        warm_up(load_bundle(bundle_path).network, batch_size)
        if on_ready is not None:
            on_ready(
                f"ray: {workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)} on "
                f"{cpus} CPUs, cluster up and kernels warm in {time.perf_counter() - started:.1f}s"
            )
        bundle = ray.put(Path(bundle_path).read_bytes())
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = ray.data.from_items([{"task": json.dumps(task)} for task in tasks])
        mapped = dataset.map_batches(
            RayTaskRunner,
            fn_constructor_args=([bundle], threads),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads,
        )
        for row in mapped.iter_rows():
            yield json.loads(row["rows"])


# --- rows to a file ---------------------------------------------------------------------

OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def output_format(out: Path) -> str:
    kind = OUTPUT_FORMATS.get(out.suffix.lower())
    if kind is None:
        raise CnntoolError(
            f"cannot write {out}: --out must end in {', '.join(OUTPUT_FORMATS)} (the format follows the name)"
        )
    if kind == "parquet":
        try:
            # pyarrow comes with the optional Ray extra: imported where it is used
            import pyarrow
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise CnntoolError(
                f"cannot write {out}: Parquet needs pyarrow; pip install pyarrow (the 'cnntool[ray]' extra "
                "brings it), or write .jsonl or .csv"
            ) from None
    return kind


@contextmanager
def row_writer(out: Path, classes: list[str]) -> Iterator[Callable[[list[dict[str, Any]]], object]]:
    """A function writing rows to `out` (.jsonl, .csv or .parquet), which appears, complete,
    only when the block ends without error."""

    kind = output_format(out)
    with atomic_file(out) as handle:
        if kind == "jsonl":
            yield lambda rows: handle.write(
                b"".join(json.dumps(row, allow_nan=False).encode() + b"\n" for row in rows)
            )
        elif kind == "csv":
            yield from csv_rows(handle, classes)
        else:
            yield from parquet_rows(handle)


def csv_rows(handle: Any, classes: list[str]) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """CSV with one probability column per class, `p_<label>`."""

    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(["input", "item", "index", "label", "probability", *(f"p_{c}" for c in classes), "error"])

    def write(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            probabilities = row["probabilities"] or [None] * len(classes)
            fields = [row["input"], row["item"], row["index"], row["label"], row["probability"]]
            writer.writerow(["" if v is None else v for v in (*fields, *probabilities, row["error"])])

    yield write
    text.flush()
    text.detach()


def parquet_rows(handle: Any) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    # pyarrow comes with the optional Ray extra: imported where it is used
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("input", pa.string()),
            ("item", pa.int64()),
            ("index", pa.int64()),
            ("label", pa.string()),
            ("probability", pa.float64()),
            ("probabilities", pa.list_(pa.float64())),
            ("error", pa.string()),
        ]
    )
    writer = pq.ParquetWriter(handle, schema)
    try:
        yield lambda rows: writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    finally:
        writer.close()
