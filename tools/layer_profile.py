"""Where the time of one training step and one inference goes: per layer and per kernel.

    python tools/bench.py --profile resnet-train-b64

The network runs layer by layer (the path a plugin layer without declared kernels takes),
with every kernel call timed (cnntool.layers.base.KERNEL_TIMER); beside it, the same step
compiled into one plan function, so the layer-by-layer overhead shows too. Medians over
`repeats` steps, after two untimed ones that load the compiled code.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def profile(spec: Path, batch: int, threads: int, repeats: int = 7) -> dict[str, Any]:
    import cnntool
    from cnntool.layers import base

    cnntool.set_threads(threads)
    rng = np.random.default_rng(0)
    plain = cnntool.Network.from_spec(spec, seed=0)
    plain.use_plan = False
    x = rng.random((batch, *plain.input_shape), dtype=np.float32)
    labels = rng.integers(0, plain.output_shape[0], batch).astype(np.int64)
    grad = rng.standard_normal((batch, plain.output_shape[0])).astype(np.float32)

    samples: dict[tuple[str, int, str, str], list[float]] = defaultdict(list)
    phase = ["forward"]

    def timer(layer: Any, kernel: Any, arrays: list) -> None:
        started = time.perf_counter()
        kernel(*arrays)
        samples[(phase[0], plain.layers.index(layer), getattr(kernel, "__name__", str(kernel)), "")].append(
            time.perf_counter() - started
        )

    def step(training: bool) -> tuple[float, float]:
        phase[0] = "forward" if training else "inference"
        started = time.perf_counter()
        plain.run_forward(x, training=training)
        forward = time.perf_counter() - started
        if not training:
            return forward, 0.0
        phase[0] = "backward"
        started = time.perf_counter()
        plain.run_backward(grad, need_input_grad=False)
        return forward, time.perf_counter() - started

    base.KERNEL_TIMER = timer
    try:
        for training in (True, False):
            step(training), step(training)
        samples.clear()
        walls = [step(True) for _ in range(repeats)]
        inference_walls = [step(False)[0] for _ in range(repeats)]
    finally:
        base.KERNEL_TIMER = None

    compiled = cnntool.Network.from_spec(spec, seed=0)
    compiled_step = median_time(lambda: compiled.train_step(x, labels), repeats)
    compiled_predict = median_time(lambda: compiled.predict_proba(x, batch_size=batch), repeats)

    rows = []
    for index, layer in enumerate(plain.layers):
        row = {"index": index, "name": layer.name, "type": layer.config.type, "kernels": {}}
        for phase_name in ("forward", "backward", "inference"):
            total = 0.0
            for (ph, k, kernel, _), values in samples.items():
                if ph == phase_name and k == index:
                    seconds = sum(values) / repeats  # per step (a kernel may run several times)
                    row["kernels"][f"{phase_name}:{kernel}"] = seconds
                    total += seconds
            row[phase_name] = total
        rows.append(row)
    return {
        "spec": str(spec),
        "batch": batch,
        "threads": threads,
        "layers": rows,
        "layer_by_layer": {
            "train_forward": statistics.median(w[0] for w in walls),
            "train_backward": statistics.median(w[1] for w in walls),
            "inference": statistics.median(inference_walls),
        },
        "compiled": {"train_step": compiled_step, "predict": compiled_predict},
    }


def median_time(function: Any, repeats: int) -> float:
    function(), function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def print_profile(result: dict[str, Any]) -> None:
    ms = 1e3
    print(f"\nprofile of {result['spec']}, batch {result['batch']}, {result['threads']} threads (ms/step)")
    print(f"{'#':>3} {'layer':18s} {'type':18s} {'forward':>9} {'backward':>9} {'inference':>9}")
    for row in result["layers"]:
        print(
            f"{row['index']:3d} {row['name'][:18]:18s} {row['type'][:18]:18s} {row['forward'] * ms:9.3f} "
            f"{row['backward'] * ms:9.3f} {row['inference'] * ms:9.3f}"
        )
    totals: dict[str, float] = defaultdict(float)
    for row in result["layers"]:
        for key, seconds in row["kernels"].items():
            totals[key] += seconds
    print("\nper kernel (summed over layers):")
    for key, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {key:48s} {seconds * ms:9.3f}")
    walls = result["layer_by_layer"]
    compiled = result["compiled"]
    print(
        f"\nlayer by layer: training forward {walls['train_forward'] * ms:.3f}, backward "
        f"{walls['train_backward'] * ms:.3f}, inference {walls['inference'] * ms:.3f}; compiled plan: "
        f"train_step {compiled['train_step'] * ms:.3f}, predict {compiled['predict'] * ms:.3f}"
    )
