"""Load-test `cnntool serve`: many concurrent HTTP clients, a share of them malformed.

Starts `cnntool serve BUNDLE` on a free loopback port (or targets `--url`, which must serve
the same bundle), sends `--requests` requests from `--concurrency` connections at once, and
reports throughput, latency percentiles, status counts and the batch sizes the server
formed (from /metrics). With `--protocol v1` (the default) valid requests mix JSON (integer
pixels, float intensities, several inputs per request), raw PNG bodies and multipart uploads
of test digits from the bundled MNIST sample, sent to /v1/models/NAME/predict; with `v2-json`
or `v2-binary` they are Open Inference Protocol requests to /v2/models/NAME/infer (UINT8 and
FP32 tensors of one or four digits, as JSON or with the binary tensor extension both ways).
Each answer is checked against the bundle's own prediction computed here. Malformed requests
(bad JSON, wrong shapes, NaN, out-of-range values, undecodable images, wrong content types or
datatypes) must get a 4xx. A connection the server drops is counted as a failed request, not
a crash of the tool. `--kill-worker-after S` (with `--workers 2` or more, on a server this
tool starts) kills one worker with SIGKILL S seconds into the run and reports how long until
a replacement was ready. Exits 1 if any answer is wrong, any status is 5xx or any request
failed.

    python tools/loadtest.py out/seed.cnnb --concurrency 50 --requests 3000
    python tools/loadtest.py out/seed.cnnb --max-batch 1      # one request per kernel call
    python tools/loadtest.py out/seed.cnnb --protocol v2-binary
    python tools/loadtest.py out/seed.cnnb --workers 2 --kill-worker-after 3
    python tools/loadtest.py out/seed.cnnb --url http://127.0.0.1:8000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

import cnntool
from cnntool.data import load_dataset
from cnntool.inference.predict import predict_raw

SAMPLES = 64


@dataclass
class Case:
    """One request to send, and what a correct answer is."""

    kind: str
    headers: dict[str, str]
    content: bytes | None = None
    files: list | None = None
    expected: list[int] | None = None  # class indices; None for a malformed request
    expected_probabilities: np.ndarray | None = None
    path: str = "predict"  # "predict" (/v1) or "infer" (/v2)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    failed: Counter = field(default_factory=Counter)  # requests without an answer, by error


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_cases(bundle: cnntool.Bundle) -> tuple[list[Case], list[Case]]:
    """Valid requests with their expected answers, and malformed ones."""
    net, preprocessing = bundle.network, bundle.preprocessing
    pixels = load_dataset("mnist-sample").x_test[:SAMPLES]  # (N, 1, 28, 28) uint8
    expected = [predict_raw(net, pixels[i : i + 1], preprocessing)[0] for i in range(SAMPLES)]
    as_json = {"content-type": "application/json"}
    valid = []
    for i in range(SAMPLES):
        probabilities = expected[i][np.newaxis]
        label = [int(np.argmax(expected[i]))]
        body = json.dumps({"inputs": [pixels[i, 0].tolist()]}).encode()
        valid.append(Case("json-pixels", as_json, body, expected=label, expected_probabilities=probabilities))
        floats = (pixels[i] / 255).astype(np.float32)
        floats_expected = predict_raw(net, floats[np.newaxis], preprocessing)
        body = json.dumps({"inputs": [floats.tolist()]}).encode()
        valid.append(
            Case(
                "json-floats",
                as_json,
                body,
                expected=[int(np.argmax(floats_expected[0]))],
                expected_probabilities=floats_expected,
            )
        )
        valid.append(
            Case(
                "png",
                {"content-type": "image/png"},
                png_bytes(pixels[i, 0]),
                expected=label,
                expected_probabilities=probabilities,
            )
        )
        several = [(i + k) % SAMPLES for k in range(4)]
        body = json.dumps({"inputs": [pixels[j, 0].tolist() for j in several]}).encode()
        valid.append(
            Case(
                "json-batch4",
                as_json,
                body,
                expected=[int(np.argmax(expected[j])) for j in several],
                expected_probabilities=np.stack([expected[j] for j in several]),
            )
        )
        pair = [i, (i + 1) % SAMPLES]
        files = [("files", (f"digit{j}.png", png_bytes(pixels[j, 0]), "image/png")) for j in pair]
        valid.append(
            Case(
                "multipart",
                {},
                files=files,
                expected=[int(np.argmax(expected[j])) for j in pair],
                expected_probabilities=np.stack([expected[j] for j in pair]),
            )
        )
    row = [0] * 28
    malformed = [
        Case("bad-json", as_json, b'{"inputs": [[0, 1'),
        Case("not-object", as_json, b"[1, 2, 3]"),
        Case("wrong-shape", as_json, json.dumps({"inputs": [[row] * 27]}).encode()),
        Case(
            "nan",
            as_json,
            b'{"inputs": [[' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]]}",
        ),
        Case("out-of-range", as_json, json.dumps({"inputs": [[[300] * 28] * 28]}).encode()),
        Case("strings", as_json, json.dumps({"inputs": [[["a"] * 28] * 28]}).encode()),
        Case("bad-image", {"content-type": "image/png"}, b"\x89PNG\r\n\x1a\nnot really"),
        Case("wrong-type", {"content-type": "text/plain"}, b"seven"),
    ]
    return valid, malformed


def make_v2_cases(bundle: cnntool.Bundle, binary: bool) -> tuple[list[Case], list[Case]]:
    """Open Inference Protocol requests: UINT8 and FP32 tensors of 1 or 4 digits, as JSON or
    with the binary tensor extension (outputs then come back binary too), and malformed ones."""
    net, preprocessing = bundle.network, bundle.preprocessing
    pixels = load_dataset("mnist-sample").x_test[:SAMPLES]
    valid = []
    for i in range(SAMPLES):
        for count in (1, 4):
            rows = pixels[[(i + k) % SAMPLES for k in range(count)]]
            for datatype, array in (("UINT8", rows), ("FP32", (rows / 255).astype(np.float32))):
                expected = predict_raw(net, array, preprocessing)
                kind = f"v2-{'binary' if binary else 'json'}-{datatype.lower()}-x{count}"
                headers, content = v2_request(array, datatype, binary)
                valid.append(
                    Case(
                        kind,
                        headers,
                        content,
                        expected=[int(k) for k in expected.argmax(axis=1)],
                        expected_probabilities=expected,
                        path="infer",
                    )
                )
    as_json = {"content-type": "application/json"}

    def tensor_json(**changes: object) -> bytes:
        tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784}
        return json.dumps({"inputs": [{**tensor, **changes}]}).encode()

    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                     "parameters": {"binary_data_size": 784}}]}
    ).encode()  # fmt: skip
    malformed = [
        Case("v2-bad-json", as_json, b'{"inputs": [', path="infer"),
        Case("v2-wrong-shape", as_json, tensor_json(shape=[1, 1, 27, 28]), path="infer"),
        Case("v2-wrong-datatype", as_json, tensor_json(datatype="BYTES"), path="infer"),
        Case("v2-out-of-range", as_json, tensor_json(data=[300] * 784), path="infer"),
        Case(
            "v2-short-binary",
            {"inference-header-content-length": str(len(header))},
            header + b"\0" * 100,
            path="infer",
        ),
    ]
    return valid, malformed


def v2_request(array: np.ndarray, datatype: str, binary: bool) -> tuple[dict[str, str], bytes]:
    tensor = {"name": "input", "shape": list(array.shape), "datatype": datatype}
    if not binary:
        document = {"inputs": [{**tensor, "data": array.reshape(-1).tolist()}]}
        return {"content-type": "application/json"}, json.dumps(document).encode()
    raw = array.astype("<f4" if datatype == "FP32" else "u1").tobytes()
    document = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(document).encode()
    return {"inference-header-content-length": str(len(header))}, header + raw


def v2_outputs(content: bytes, header_length: str | None) -> dict[str, np.ndarray | list]:
    """The outputs of an inference response, JSON or binary, by name."""
    length = int(header_length) if header_length else len(content)
    document, offset, outputs = json.loads(content[:length]), length, {}
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs[output["name"]] = np.array(output["data"]).reshape(output["shape"])
            continue
        chunk, offset = content[offset : offset + size], offset + size
        if output["datatype"] == "FP32":
            outputs[output["name"]] = np.frombuffer(chunk, "<f4").reshape(output["shape"])
        elif output["datatype"] == "INT64":
            outputs[output["name"]] = np.frombuffer(chunk, "<i8").reshape(output["shape"])
    return outputs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle: Path, options: list[str], log: io.IOBase) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("cnntool")),
        "serve",
        str(bundle),
        "--port",
        str(port),
        "--no-access-log",
        *options,
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}: {' '.join(command)}")
        if asyncio.run(get_status(f"{url}/readyz")) == 200:
            return process, url
        time.sleep(0.1)
    process.terminate()
    raise SystemExit("the server did not become ready in 120 s")


async def get_status(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return None


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


def cpu_seconds(process: subprocess.Popen | None) -> float:
    """User plus system CPU seconds of a process so far (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AttributeError, OSError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_stats(metrics_text: str) -> dict[str, float]:
    """Sum, count and buckets of the cnntool_batch_size histogram."""
    stats: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = re.match(r'cnntool_batch_size_(sum|count|bucket)(?:\{le="([^"]+)"\})? (\S+)$', line)
        if match:
            kind, bound, value = match.groups()
            stats[f"le={bound}" if bound else kind] = float(value)
    return stats


def worker_pids(supervisor: subprocess.Popen) -> list[int]:
    """The worker processes of a `--workers N` server (children of uvicorn's supervisor)."""
    children = []
    for task in Path(f"/proc/{supervisor.pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    # The supervisor also starts one helper (multiprocessing's resource tracker); workers run the app.
    return [pid for pid in children if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def kill_a_worker(process: subprocess.Popen, log_path: Path, after: float, report: dict) -> None:
    """SIGKILL one worker `after` seconds in; record how long until a new one was ready."""
    await asyncio.sleep(after)
    workers = worker_pids(process)
    ready_lines = log_path.read_text().count(" ready (digest ")
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.perf_counter()
    report.update(killed_worker=victim, workers_before=len(workers))
    while time.perf_counter() - killed < 60:
        await asyncio.sleep(0.05)
        replacement = set(worker_pids(process)) - set(workers)
        if replacement and "replacement_started_s" not in report:
            report["replacement_started_s"] = round(time.perf_counter() - killed, 2)
        if log_path.read_text().count(" ready (digest ") > ready_lines:
            report["replacement_ready_s"] = round(time.perf_counter() - killed, 2)
            return


async def run(
    url: str, model: str, valid: list[Case], malformed: list[Case], args: argparse.Namespace, fault=None
) -> dict:
    rng = random.Random(args.seed)
    plan = [
        rng.choice(malformed) if rng.random() < args.malformed else rng.choice(valid)
        for _ in range(args.requests)
    ]
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        before = batch_stats(await (await session.get("/metrics")).text())
        queue: asyncio.Queue[Case] = asyncio.Queue()
        for case in plan:
            queue.put_nowait(case)

        async def worker() -> None:
            while not queue.empty():
                case = queue.get_nowait()
                started = time.perf_counter()
                tally.by_kind[case.kind] += 1
                path = (
                    f"/v1/models/{model}/predict" if case.path == "predict" else f"/v2/models/{model}/infer"
                )
                try:
                    async with session.post(path, headers=case.headers, data=body(case)) as response:
                        content = await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # A dropped connection (a worker killed, say) fails this request only.
                    tally.failed[type(exc).__name__] += 1
                    continue
                tally.latencies.append(time.perf_counter() - started)
                tally.statuses[response.status] += 1
                check(case, response.status, content, response.headers, tally)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)), *([fault] if fault else []))
        seconds = time.perf_counter() - started
        try:
            after = batch_stats(await (await session.get("/metrics")).text())
            healthy = [(await session.get(path)).status for path in ("/healthz", "/readyz")] == [200, 200]
        except aiohttp.ClientError:  # the server is gone
            after, healthy = before, False
    latencies = np.array(tally.latencies) * 1000
    batches = after.get("count", 0) - before.get("count", 0)
    inputs = after.get("sum", 0) - before.get("sum", 0)
    return {
        "url": url,
        "requests": len(plan),
        "concurrency": args.concurrency,
        "seconds": round(seconds, 3),
        "requests_per_second": round(len(plan) / seconds, 1),
        "latency_ms": {
            q: round(float(np.percentile(latencies, int(q[1:]))), 2) for q in ("p50", "p90", "p99")
        }
        | {"max": round(float(latencies.max()), 2)},
        "statuses": {str(code): count for code, count in sorted(tally.statuses.items())},
        "kinds": dict(sorted(tally.by_kind.items())),
        "wrong": tally.wrong[:20],
        "wrong_count": len(tally.wrong),
        "failed": dict(tally.failed),
        "failed_count": sum(tally.failed.values()),
        "batches": {
            "count": int(batches),
            "inputs": int(inputs),
            "mean_size": round(inputs / batches, 2) if batches else None,
            "sizes": size_counts(before, after),
        },
        "healthy_after": healthy,
    }


def size_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Batches per histogram bucket during the run, e.g. {"<=1": 5, "2-2": 0, "3-4": 12}."""
    bounds = sorted((float(key[3:]), key) for key in after if key.startswith("le="))
    counts, previous_bound, previous_total = {}, 0.0, 0.0
    for bound, key in bounds:
        total = after[key] - before.get(key, 0)
        name = f"{int(previous_bound) + 1}-{bound:g}" if bound != float("inf") else f">{previous_bound:g}"
        if total - previous_total:
            counts[name] = int(total - previous_total)
        previous_bound, previous_total = bound, total
    return counts


def body(case: Case) -> bytes | aiohttp.FormData:
    if case.files is None:
        return case.content
    form = aiohttp.FormData()  # a FormData is consumed by one request
    for name, (filename, data, content_type) in case.files:
        form.add_field(name, data, filename=filename, content_type=content_type)
    return form


def check(case: Case, status: int, content: bytes, headers, tally: Tally) -> None:
    """Record a wrong answer: a valid request not answered with the expected predictions,
    a malformed one not refused with a 4xx and an error message."""
    text = content[:200].decode("utf-8", "replace")
    if case.expected is None:
        if not (400 <= status < 500 and "error" in json.loads(content)):
            tally.wrong.append(f"{case.kind}: {status} {text}")
        return
    if status != 200:
        tally.wrong.append(f"{case.kind}: {status} {text}")
        return
    if case.path == "infer":
        outputs = v2_outputs(content, headers.get("inference-header-content-length"))
        labels, probabilities = outputs["index"].tolist(), outputs["probabilities"]
    else:
        predictions = json.loads(content)["predictions"]
        labels = [p["index"] for p in predictions]
        probabilities = np.array([p["probabilities"] for p in predictions])
    if labels != case.expected or not np.allclose(probabilities, case.expected_probabilities, atol=1e-5):
        tally.wrong.append(f"{case.kind}: expected classes {case.expected}, received {labels}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle served (answers are checked against it)")
    parser.add_argument("--url", help="target this running server instead of starting one")
    parser.add_argument("--model", help="the model's name on the server [the bundle's file name]")
    parser.add_argument(
        "--protocol", choices=("v1", "v2-json", "v2-binary"), default="v1", help="the requests to send"
    )
    parser.add_argument("--kill-worker-after", type=float, help="SIGKILL one worker this many seconds in")
    parser.add_argument("--concurrency", type=int, default=50, help="connections sending at once")
    parser.add_argument("--requests", type=int, default=3000, help="requests in all")
    parser.add_argument("--malformed", type=float, default=0.2, help="share of malformed requests")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--max-batch", type=int, help="passed to the server this tool starts")
    parser.add_argument("--max-wait-ms", type=float, help="passed to the server this tool starts")
    parser.add_argument("--workers", type=int, help="passed to the server this tool starts")
    parser.add_argument("--threads", type=int, help="passed to the server this tool starts")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()

    bundle = cnntool.load_bundle(args.bundle)
    if tuple(bundle.network.input_shape) != (1, 28, 28):
        raise SystemExit(f"the load test sends MNIST digits; the model takes {bundle.network.input_shape}")
    if args.protocol == "v1":
        valid, malformed = make_cases(bundle)
    else:
        valid, malformed = make_v2_cases(bundle, binary=args.protocol == "v2-binary")
    model = args.model or args.bundle.name.removesuffix(".cnnb")
    if args.kill_worker_after is not None and (args.url or (args.workers or 1) < 2):
        raise SystemExit("--kill-worker-after needs --workers 2 or more on a server this tool starts")
    process = None
    url = args.url
    log = tempfile.NamedTemporaryFile("w+", prefix="loadtest-serve-", suffix=".log")  # noqa: SIM115
    if url is None:
        options = []
        for name in ("max_batch", "max_wait_ms", "workers", "threads"):
            if getattr(args, name) is not None:
                options += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        process, url = start_server(args.bundle, options, log)
    try:
        served = asyncio.run(get_json(f"{url}/v1/models/{model}"))
        if served.get("digest") != bundle.digest:
            raise SystemExit(f"{url} serves {served.get('digest')}, not {args.bundle} ({bundle.digest})")
        cpu_before = cpu_seconds(process)
        fault_report: dict = {}
        fault = None
        if args.kill_worker_after is not None:
            fault = kill_a_worker(process, Path(log.name), args.kill_worker_after, fault_report)
        report = asyncio.run(run(url, model, valid, malformed, args, fault))
        if fault_report:
            report["fault"] = fault_report
        if process is not None and args.workers in (None, 1):
            # CPU time the server spent per request: steadier than throughput on a busy machine.
            used = cpu_seconds(process) - cpu_before
            report["server_cpu_ms_per_request"] = round(1000 * used / report["requests"], 3)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        log.close()
    report["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    server_errors = sum(count for code, count in report["statuses"].items() if code.startswith("5"))
    failed = report["wrong_count"] or report["failed_count"] or server_errors
    return 1 if failed or not report["healthy_after"] else 0


def print_report(report: dict) -> None:
    latency = report["latency_ms"]
    batches = report["batches"]
    print(f"{report['requests']} requests from {report['concurrency']} connections to {report['url']}")
    print(f"  {report['seconds']} s, {report['requests_per_second']} requests/s")
    print("  latency ms: " + "  ".join(f"{name} {value}" for name, value in latency.items()))
    print(f"  statuses: {report['statuses']}")
    print(f"  wrong answers: {report['wrong_count']}" + "".join(f"\n    {w}" for w in report["wrong"]))
    print(f"  failed requests (no answer): {report['failed_count']} {report['failed'] or ''}")
    if "fault" in report:
        print(f"  killed worker: {report['fault']}")
    print(
        f"  batches: {batches['count']} for {batches['inputs']} inputs, mean size {batches['mean_size']}, "
        f"sizes {batches['sizes']}"
    )
    if "server_cpu_ms_per_request" in report:
        print(f"  server CPU per request: {report['server_cpu_ms_per_request']} ms")
    print(f"  healthy after: {report['healthy_after']}")


if __name__ == "__main__":
    sys.exit(main())
