"""Load-test `cnntool serve`: many concurrent HTTP clients, a share of them malformed.

Starts `cnntool serve BUNDLE` on a free loopback port (or targets `--url`, which must serve
the same bundle), sends `--requests` requests from `--concurrency` connections at once, and
reports throughput, latency percentiles, status counts and the batch sizes the server
formed (from /metrics). Valid requests mix JSON (integer pixels, float intensities, several
inputs per request), raw PNG bodies and multipart uploads of test digits from the bundled
MNIST sample; each answer is checked against the bundle's own prediction computed here.
Malformed requests (bad JSON, wrong shapes, NaN, out-of-range values, undecodable images,
wrong content types) must get a 4xx. Exits 1 if any answer is wrong or any status is 5xx.

    python tools/loadtest.py out/seed.cnnb --concurrency 50 --requests 3000
    python tools/loadtest.py out/seed.cnnb --max-batch 1      # one request per kernel call
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
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

import cnntool
from cnntool.data import load_dataset
from cnntool.predict import predict_raw

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


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_cases(bundle: cnntool.Bundle) -> tuple[list[Case], list[Case]]:
    """Valid requests with their expected answers, and malformed ones."""
    net, preprocessing = bundle.network, bundle.preprocessing
    if tuple(net.input_shape) != (1, 28, 28):
        raise SystemExit(f"the load test sends MNIST digits; the model takes {net.input_shape}")
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
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
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


async def run(url: str, valid: list[Case], malformed: list[Case], args: argparse.Namespace) -> dict:
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
                async with session.post("/v1/predict", headers=case.headers, data=body(case)) as response:
                    text = await response.text()
                tally.latencies.append(time.perf_counter() - started)
                tally.statuses[response.status] += 1
                tally.by_kind[case.kind] += 1
                check(case, response.status, text, tally)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds = time.perf_counter() - started
        after = batch_stats(await (await session.get("/metrics")).text())
        healthy = [(await session.get(path)).status for path in ("/healthz", "/readyz")] == [200, 200]
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


def check(case: Case, status: int, text: str, tally: Tally) -> None:
    """Record a wrong answer: a valid request not answered with the expected predictions,
    a malformed one not refused with a 4xx and an error message."""
    if case.expected is None:
        if not (400 <= status < 500 and "error" in json.loads(text)):
            tally.wrong.append(f"{case.kind}: {status} {text[:200]}")
        return
    if status != 200:
        tally.wrong.append(f"{case.kind}: {status} {text[:200]}")
        return
    predictions = json.loads(text)["predictions"]
    labels = [p["index"] for p in predictions]
    probabilities = np.array([p["probabilities"] for p in predictions])
    if labels != case.expected or not np.allclose(probabilities, case.expected_probabilities, atol=1e-5):
        tally.wrong.append(f"{case.kind}: expected classes {case.expected}, received {labels}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle served (answers are checked against it)")
    parser.add_argument("--url", help="target this running server instead of starting one")
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
    valid, malformed = make_cases(bundle)
    process = None
    url = args.url
    if url is None:
        options = []
        for name in ("max_batch", "max_wait_ms", "workers", "threads"):
            if getattr(args, name) is not None:
                options += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        process, url = start_server(args.bundle, options)
    try:
        served = asyncio.run(get_json(f"{url}/v1/model"))
        if served.get("digest") != bundle.digest:
            raise SystemExit(f"{url} serves {served.get('digest')}, not {args.bundle} ({bundle.digest})")
        cpu_before = cpu_seconds(process)
        report = asyncio.run(run(url, valid, malformed, args))
        if process is not None:
            # CPU time the server spent per request: steadier than throughput on a busy machine.
            used = cpu_seconds(process) - cpu_before
            report["server_cpu_ms_per_request"] = round(1000 * used / report["requests"], 3)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    report["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    server_errors = sum(count for code, count in report["statuses"].items() if code.startswith("5"))
    return 1 if report["wrong_count"] or server_errors or not report["healthy_after"] else 0


def print_report(report: dict) -> None:
    latency = report["latency_ms"]
    batches = report["batches"]
    print(f"{report['requests']} requests from {report['concurrency']} connections to {report['url']}")
    print(f"  {report['seconds']} s, {report['requests_per_second']} requests/s")
    print("  latency ms: " + "  ".join(f"{name} {value}" for name, value in latency.items()))
    print(f"  statuses: {report['statuses']}")
    print(f"  wrong answers: {report['wrong_count']}" + "".join(f"\n    {w}" for w in report["wrong"]))
    print(
        f"  batches: {batches['count']} for {batches['inputs']} inputs, mean size {batches['mean_size']}, "
        f"sizes {batches['sizes']}"
    )
    if "server_cpu_ms_per_request" in report:
        print(f"  server CPU per request: {report['server_cpu_ms_per_request']} ms")
    print(f"  healthy after: {report['healthy_after']}")


if __name__ == "__main__":
    sys.exit(main())
