"""Benchmark cnntool against PyTorch on the CPU, side by side in one run.

    python tools/bench.py                  # everything, 2 rounds, threads = CPUs
    python tools/bench.py --threads 1 --rounds 3 --only seed-train-b1
    python tools/bench.py --isa avx2       # both frameworks held to AVX2 (on an AVX-512 CPU)
    python tools/bench.py --profile resnet-train-b64   # time per layer and kernel, no PyTorch

Workloads (from the issue that asked for them):
  seed-train-b1     models/seed_cnn.json, SGD at batch 1 over 1,000 MNIST images
  seed-train-b64    the same at batch 64
  seed-latency-b1   inference latency of one image (Python API: Network.predict_proba)
  seed-infer-b64    inference throughput at batch 64
  big-train-b1      models/mnist_cnn.json, SGD at batch 1 (over 300 images: it is slow)
  big-train-b64     the same at batch 64 over 1,000 images
  resnet-train-b64  models/resnet_fashion.json (a graph: residual blocks with batch norm),
                    SGD with momentum at batch 64 over 1,000 images
  big-latency-b1    models/mnist_cnn.json, inference latency of one image
  big-infer-b64     its inference throughput at batch 64
  resnet-latency-b1 its inference latency of one image
  plugin-train-b1   the seed net with the plugin activation leaky_relu (cnntool-extras, fused
                    into the convolution before it) in place of relu, against the seed net
                    with built-in relu, side by side, and layer by layer (CNNTOOL_FUSE=0),
                    SGD at batch 1 over 1,000 images
  plugin-train-b32  the same at batch 32
  plugin-latency-b1 inference latency of one image, plugin against built-in

Inference is also timed in onnxruntime, when it is installed, on the same network exported
by `cnntool export --softmax` (probabilities, as predict_proba gives), with the same number
of threads: the runtime people export to for fast CPU inference.

Training is timed through cnntool's own command, `cnntool train --json` in a subprocess,
from its per-epoch `seconds` (the first epoch, which loads compiled code, is left out);
PyTorch runs the identical network (same shapes, the same initial weights copied over, the
same data in the same shuffled order, SGD with the same momentum, the same thread count) in
this process. The two alternate, round after round, and the table reports medians, the
ratio cnntool/PyTorch in images per second, and the per-epoch losses of both, which must
match closely since they do the same arithmetic. Also reported: peak memory of the training
processes, `cnntool --help` and `cnntool infer` wall times, and the cold compile time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
SEED = 0
# Plain SGD at batch 1 (as the script cnntool grew from), momentum 0.9 at batch 64; both train
# stably, so the two frameworks' losses stay comparable epoch after epoch.
LR = 0.01
MOMENTUM = {1: 0.0, 32: 0.9, 64: 0.9}

TRAIN_WORKLOADS = {
    # name: (spec, batch size, images, epochs per run)
    "seed-train-b1": ("models/seed_cnn.json", 1, 1000, 3),
    "seed-train-b64": ("models/seed_cnn.json", 64, 1000, 4),
    "big-train-b1": ("models/mnist_cnn.json", 1, 300, 3),
    "big-train-b64": ("models/mnist_cnn.json", 64, 1000, 3),
    "resnet-train-b64": ("models/resnet_fashion.json", 64, 1000, 3),
    # A full-size figure: mnist_cnn over all 60,000 Fashion-MNIST training images (needs
    # the dataset: Debian's dataset-fashion-mnist, or `cnntool data download fashion-mnist`).
    # Two epochs, the second timed: about 4 minutes a round, so only when named in --only.
    "big-epoch-fashion": ("models/mnist_cnn.json", 64, 60000, 2),
}
# Where a training workload's images come from (default: the bundled MNIST sample).
TRAIN_DATA = {"big-epoch-fashion": "fashion-mnist"}
OPT_IN = {"big-epoch-fashion"}
INFER_WORKLOADS = {
    # name: (spec, batch size)
    "seed-latency-b1": ("models/seed_cnn.json", 1),
    "seed-infer-b64": ("models/seed_cnn.json", 64),
    "big-latency-b1": ("models/mnist_cnn.json", 1),
    "big-infer-b64": ("models/mnist_cnn.json", 64),
    "resnet-latency-b1": ("models/resnet_fashion.json", 1),
}


# Environment holding both frameworks to one instruction set (numba's target CPU, OpenBLAS's
# kernels, PyTorch's ATen and oneDNN kernels); read when each library loads, so bench.py runs
# itself again with them set.
ISA_ENV = {
    "avx2": {
        "NUMBA_CPU_NAME": "haswell",
        "OPENBLAS_CORETYPE": "Haswell",
        "CNNTOOL_BLAS_CORETYPE": "keep",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
}


def hold_to_isa(isa: str) -> None:
    """Run this script again under ISA_ENV[isa] unless it already runs so."""
    wanted = ISA_ENV.get(isa, {})
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# The seed net with a plugin activation in place of each ReLU, against the seed net itself:
# the same shapes and the same work (leaky_relu, like relu, is one compare and select per
# element, and a stride-1 convolution before it applies it in its own kernel).
PLUGIN_LAYERS = (
    {"type": "leaky_relu", "negative_slope": 0.01},
    {"type": "leaky_relu", "negative_slope": 0.01},
)
PLUGIN_WORKLOADS = {
    # name: (batch size, images, epochs per run); batch 0: inference latency
    "plugin-train-b1": (1, 1000, 3),
    "plugin-train-b32": (32, 1000, 4),
    "plugin-latency-b1": (0, 1, 0),
}


def machine(threads: int) -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": model,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "avx512": "avx512f" in cpu_flags(),
        "isa": "avx2" if os.environ.get("NUMBA_CPU_NAME") == "haswell" else "native",
    }
    import numba

    info["numba"] = numba.__version__
    info["numpy"] = np.__version__
    try:
        from threadpoolctl import threadpool_info

        import cnntool.kernels.blas  # noqa: F401

        info["blas"] = sorted({f"{i['internal_api']} {i.get('architecture')}" for i in threadpool_info()})
    except Exception:
        pass
    return info


def dataset(folder: Path, images: int, source: str = "mnist-sample") -> Path:
    """An .npz with the first `images` training images of a dataset (the bundled MNIST
    sample unless told)."""
    from cnntool.data import load_dataset

    sample = load_dataset(source)
    path = folder / f"{source}-{images}.npz"
    np.savez(
        path,
        x_train=sample.x_train[:images],
        y_train=sample.y_train[:images],
        x_test=sample.x_test[:100],
        y_test=sample.y_test[:100],
    )
    return path


def bench_spec(spec: str, folder: Path) -> Path:
    """The spec without its training section and class names: the benchmark gives every
    training option on the command line and trains on digits."""
    data = json.loads((ROOT / spec).read_text())
    data.pop("training", None)
    data.pop("classes", None)
    path = folder / Path(spec).name
    path.write_text(json.dumps(data))
    return path


def run_cnntool_train(
    spec: Path, data: Path, batch: int, epochs: int, threads: int, out: Path, env: dict
) -> dict:
    """`cnntool train --json` in a subprocess; returns its history and the child's peak memory."""
    command = [
        CNNTOOL,
        "train",
        str(spec),
        "--data",
        str(data),
        "--batch-size",
        str(batch),
        "--epochs",
        str(epochs),
        "--lr",
        str(LR),
        "--momentum",
        str(MOMENTUM[batch]),
        "--seed",
        str(SEED),
        "--val-split",
        "0",
        "--optimizer",
        "sgd",
        "--threads",
        str(threads),
        "--out",
        str(out),
        "--json",
    ]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env, text=True)
        stdout = process.stdout.read()
        # wait4 reaps this child alone and gives its own peak memory (ru_maxrss, KiB on Linux).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"cnntool train failed:\n{errors.read()}")
    report = json.loads(stdout)
    report["wall"] = wall
    report["peak_mb"] = usage.ru_maxrss / 1024
    return report


def torch_network(spec_path: Path, seed: int):
    """The spec as a torch module holding cnntool's initial weights for `seed`."""
    import torch
    from torch_graph import torch_graph

    import cnntool

    net = cnntool.Network.from_spec(spec_path, seed=seed)
    return torch_graph(torch, net), net


def torch_train_epochs(model, x: np.ndarray, y: np.ndarray, batch: int, epochs: int) -> list[dict]:
    """SGD epochs in the order cnntool's training loop draws them (same generator, same seed)."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM[batch])
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs = torch.from_numpy(x.astype(np.float32) / np.float32(255.0))
    labels = torch.from_numpy(y.astype(np.int64))
    rng = np.random.default_rng(SEED)
    history = []
    n = len(x)
    for epoch in range(1, epochs + 1):
        order = torch.from_numpy(rng.permutation(n))
        started = time.perf_counter()
        total = 0.0
        for start in range(0, n, batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[index]), labels[index])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        history.append({"epoch": epoch, "loss": total / n, "seconds": time.perf_counter() - started})
    return history


def bench_training(name: str, rounds: int, threads: int, folder: Path, env: dict) -> dict:
    import torch

    spec_name, batch, images, epochs = TRAIN_WORKLOADS[name]
    spec = bench_spec(spec_name, folder)
    data = dataset(folder, images, TRAIN_DATA.get(name, "mnist-sample"))
    from cnntool.data import load_dataset

    sample = load_dataset(str(data))
    ours, theirs, peaks, losses = [], [], [], {}
    for _ in range(rounds):
        report = run_cnntool_train(spec, data, batch, epochs, threads, folder / f"{name}.cnnb", env)
        ours += [r["seconds"] for r in report["history"][1:]]
        peaks.append(report["peak_mb"])
        losses["cnntool"] = [r["loss"] for r in report["history"]]
        model, _ = torch_network(spec, SEED)
        torch.set_num_threads(threads)
        history = torch_train_epochs(model, sample.x_train, sample.y_train, batch, epochs)
        theirs += [r["seconds"] for r in history[1:]]
        losses["pytorch"] = [r["loss"] for r in history]
    ours_ips = images / statistics.median(ours)
    theirs_ips = images / statistics.median(theirs)
    return {
        "workload": name,
        "images": images,
        "batch": batch,
        "cnntool_images_per_s": ours_ips,
        "pytorch_images_per_s": theirs_ips,
        "ratio": ours_ips / theirs_ips,
        "cnntool_us_per_image": 1e6 / ours_ips,
        "pytorch_us_per_image": 1e6 / theirs_ips,
        "cnntool_losses": losses["cnntool"],
        "pytorch_losses": losses["pytorch"],
        "max_loss_difference": max(
            abs(a - b) for a, b in zip(losses["cnntool"], losses["pytorch"], strict=True)
        ),
        "cnntool_peak_mb": max(peaks),
    }


def bench_inference(name: str, rounds: int, threads: int, folder: Path) -> dict:
    import torch

    import cnntool
    from cnntool.data import load_dataset

    spec_name, batch = INFER_WORKLOADS[name]
    cnntool.set_threads(threads)
    torch.set_num_threads(threads)
    model, net = torch_network(bench_spec(spec_name, folder), SEED)
    model.eval()
    x = load_dataset("mnist-sample").x_test[:batch].astype(np.float32) / np.float32(255.0)
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(net.predict_proba(x), torch.softmax(model(tx), 1).detach().numpy(), atol=1e-5)
    started = time.perf_counter()
    net.predict_proba(x)
    net.predict_proba(x)
    once = (time.perf_counter() - started) / 2
    repeats = max(20, min(20000, int(1.0 / max(once, 1e-7))))  # about a second per timing

    def time_ours() -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            net.predict_proba(x)
        return (time.perf_counter() - started) / repeats

    def time_theirs() -> float:
        with torch.inference_mode():
            started = time.perf_counter()
            for _ in range(repeats):
                torch.softmax(model(tx), 1)
            return (time.perf_counter() - started) / repeats

    session = onnx_session(net, folder / f"{name}.onnx", threads)
    feed = {session.get_inputs()[0].name: x} if session is not None else {}
    if session is not None:
        (ort_probs,) = session.run(["probabilities"], feed)
        np.testing.assert_allclose(ort_probs, net.predict_proba(x), atol=1e-5)

    def time_onnxruntime() -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            session.run(["probabilities"], feed)
        return (time.perf_counter() - started) / repeats

    time_ours(), time_theirs()  # warm up both
    if session is not None:
        time_onnxruntime()
    ours, theirs, ort = [], [], []
    for _ in range(max(rounds, 3)):
        ours.append(time_ours())
        theirs.append(time_theirs())
        if session is not None:
            ort.append(time_onnxruntime())
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    extra = {}
    if ort:
        ort_s = statistics.median(ort)
        extra = {"onnxruntime_us_per_call": ort_s * 1e6, "onnxruntime_images_per_s": batch / ort_s,
                 "onnxruntime_ratio": ort_s / ours_s}  # fmt: skip
    return {
        **extra,
        "workload": name,
        "batch": batch,
        "cnntool_us_per_call": ours_s * 1e6,
        "pytorch_us_per_call": theirs_s * 1e6,
        "cnntool_images_per_s": batch / ours_s,
        "pytorch_images_per_s": batch / theirs_s,
        "ratio": theirs_s / ours_s,
    }


def onnx_session(net, path: Path, threads: int):
    """onnxruntime running `net` exported by cnntool (with its softmax), or None without
    onnxruntime or the onnx extra."""
    try:
        import onnxruntime
    except ImportError:
        return None
    import cnntool
    from cnntool.interchange import export_file

    bundle = path.with_suffix(".cnnb")
    cnntool.save_bundle(net, bundle)
    export_file(bundle, path, softmax=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def install_extras(folder: Path) -> Path:
    """plugins/cnntool-extras installed into a folder of its own (offline, no dependencies),
    to put on PYTHONPATH: the project's environment is not changed."""
    import shutil

    target = folder / "site-extras"
    if not target.exists():
        source = shutil.copytree(ROOT / "plugins/cnntool-extras", folder / "extras-src",
                                 ignore=shutil.ignore_patterns("build", "*.egg-info"))  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
             "--no-build-isolation", "--target", str(target), str(source)],
            check=True,
        )  # fmt: skip
    return target


def plugin_specs(folder: Path) -> dict[str, Path]:
    """The seed spec with built-in relu, and with the plugin activations in their place."""
    data = json.loads((ROOT / "models/seed_cnn.json").read_text())
    data.pop("training", None)
    data.pop("classes", None)
    plugin = json.loads(json.dumps(data))
    relus = [k for k, layer in enumerate(plugin["layers"]) if layer["type"] == "relu"]
    for k, layer in zip(relus, PLUGIN_LAYERS, strict=True):
        plugin["layers"][k] = dict(layer)
    paths = {}
    for name, spec in (("builtin", data), ("plugin", plugin)):
        paths[name] = folder / f"seed-{name}.json"
        paths[name].write_text(json.dumps(spec))
    return paths


def bench_plugin(name: str, rounds: int, threads: int, folder: Path, env: dict) -> dict:
    """Built-in against plugin layers of the same work, alternating, in one run; and the
    plugin net layer by layer, what a plugin without declared kernel calls costs."""
    batch, images, epochs = PLUGIN_WORKLOADS[name]
    site = install_extras(folder)
    specs = plugin_specs(folder)
    plugin_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))}
    runs = {
        "builtin": (specs["builtin"], env),
        "plugin": (specs["plugin"], plugin_env),
        "layer_by_layer": (specs["plugin"], {**plugin_env, "CNNTOOL_FUSE": "0"}),
    }
    if batch == 0:
        return plugin_latency(name, rounds, threads, site, specs)
    data = dataset(folder, images)
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    losses = {}
    for _ in range(rounds):
        for key, (spec, environment) in runs.items():
            report = run_cnntool_train(
                spec, data, batch, epochs, threads, folder / f"{name}-{key}.cnnb", environment
            )
            seconds[key] += [r["seconds"] for r in report["history"][1:]]
            losses[key] = [r["loss"] for r in report["history"]]
            if key != "layer_by_layer":
                assert report["execution"]["compiled"], report["execution"]
    rates = {key: images / statistics.median(values) for key, values in seconds.items()}
    return {
        "workload": name,
        "batch": batch,
        "images": images,
        "builtin_images_per_s": rates["builtin"],
        "plugin_images_per_s": rates["plugin"],
        "layer_by_layer_images_per_s": rates["layer_by_layer"],
        "ratio": rates["plugin"] / rates["builtin"],
        "spread": {key: [min(values), max(values)] for key, values in seconds.items()},
        "losses": losses,
    }


def plugin_latency(name: str, rounds: int, threads: int, site: Path, specs: dict[str, Path]) -> dict:
    """Inference latency of one image, built-in against plugin, in this process."""
    import cnntool
    from cnntool.data import load_dataset
    from cnntool.model.registry import reset_registry

    sys.path.insert(0, str(site))
    reset_registry()
    cnntool.set_threads(threads)
    x = load_dataset("mnist-sample").x_test[:1].astype(np.float32) / np.float32(255.0)
    nets = {key: cnntool.Network.from_spec(specs[key], seed=SEED) for key in ("builtin", "plugin")}
    plain = cnntool.Network.from_spec(specs["plugin"], seed=SEED)
    plain.use_plan = False
    nets["layer_by_layer"] = plain
    repeats = 5000

    def timed(net: Any) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            net.predict_proba(x)
        return (time.perf_counter() - started) / repeats

    for net in nets.values():
        timed(net)  # compile or load, and warm up
    times: dict[str, list[float]] = {key: [] for key in nets}
    for _ in range(max(rounds, 3)):
        for key, net in nets.items():
            times[key].append(timed(net))
    us = {key: statistics.median(values) * 1e6 for key, values in times.items()}
    return {
        "workload": name,
        "batch": 1,
        "builtin_us_per_call": us["builtin"],
        "plugin_us_per_call": us["plugin"],
        "layer_by_layer_us_per_call": us["layer_by_layer"],
        "ratio": us["builtin"] / us["plugin"],
        "spread": {key: [min(v) * 1e6, max(v) * 1e6] for key, v in times.items()},
    }


def startup(folder: Path, env: dict) -> dict:
    """Wall times of `cnntool --help`, of `cnntool infer` on a warm cache, and of the demo's
    training run on a cold cache (fresh NUMBA_CACHE_DIR and CNNTOOL_CACHE_DIR)."""

    def wall(command: list[str], environment: dict) -> float:
        started = time.perf_counter()
        subprocess.run(command, env=environment, check=True, capture_output=True)
        return time.perf_counter() - started

    digit = str(ROOT / "models/digits/digit_7.png")
    bundle = folder / "seed-train-b1.cnnb"
    cold_env = {
        **env,
        "NUMBA_CACHE_DIR": str(folder / "cold-numba"),
        "CNNTOOL_CACHE_DIR": str(folder / "cold"),
    }
    demo = [CNNTOOL, "train", str(ROOT / "models/seed_cnn.json"), "--data", "mnist-sample", "--epochs", "1",
            "--out", str(folder / "cold.cnnb")]  # fmt: skip
    cold = wall(demo, cold_env)  # compiles into the fresh caches
    warm = wall(demo, cold_env)  # the same command, now loading from them
    helps = sorted(wall([CNNTOOL, "--help"], env) for _ in range(5))
    infers = sorted(wall([CNNTOOL, "infer", str(bundle), digit], env) for _ in range(5))
    return {
        "help_seconds": helps[2],
        "infer_seconds_warm": infers[2],
        "demo_train_1_epoch_cold_seconds": cold,
        "demo_train_1_epoch_warm_seconds": warm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all CPUs)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per workload")
    parser.add_argument("--only", nargs="*", help="workloads to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--isa", choices=["native", *ISA_ENV], default="native",
        help="instruction set for both frameworks: native (default) or avx2 (see ISA_ENV)",
    )  # fmt: skip
    parser.add_argument("--profile", metavar="WORKLOAD", help="time per layer and kernel of one workload")
    args = parser.parse_args()
    hold_to_isa(args.isa)
    if args.profile:
        from layer_profile import print_profile, profile

        from cnntool.system.threads import requested_threads

        known = {**{k: v[:2] for k, v in TRAIN_WORKLOADS.items()}, **INFER_WORKLOADS}
        if args.profile not in known:
            raise SystemExit(f"unknown workload {args.profile!r}; known: {', '.join(known)}")
        spec, batch = known[args.profile]
        with tempfile.TemporaryDirectory(prefix="cnntool-profile-") as tmp:
            result = profile(bench_spec(spec, Path(tmp)), batch, requested_threads(args.threads))
        print_profile(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(
            "PyTorch is needed for the side-by-side run: pip install torch==2.13.0 (CPU)"
        ) from None
    from cnntool.system.threads import requested_threads

    threads = requested_threads(args.threads)
    every = [*TRAIN_WORKLOADS, *INFER_WORKLOADS, *PLUGIN_WORKLOADS]
    names = args.only or [name for name in every if name not in OPT_IN]
    results = {"machine": machine(threads), "workloads": []}
    env = {**os.environ, "CNNTOOL_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="cnntool-bench-") as tmp:
        folder = Path(tmp)
        for name in names:
            if name in TRAIN_WORKLOADS:
                results["workloads"].append(bench_training(name, args.rounds, threads, folder, env))
            elif name in INFER_WORKLOADS:
                results["workloads"].append(bench_inference(name, args.rounds, threads, folder))
            elif name in PLUGIN_WORKLOADS:
                results["workloads"].append(bench_plugin(name, args.rounds, threads, folder, env))
            else:
                known = ", ".join([*TRAIN_WORKLOADS, *INFER_WORKLOADS, *PLUGIN_WORKLOADS])
                raise SystemExit(f"unknown workload {name!r}; known: {known}")
            print(format_row(results["workloads"][-1]), flush=True)
        if "seed-train-b1" in names:
            results["startup"] = startup(folder, env)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def format_row(row: dict) -> str:
    if "plugin_us_per_call" in row:
        return (
            f"{row['workload']:16s} built-in {row['builtin_us_per_call']:7.1f} us/call   plugin "
            f"{row['plugin_us_per_call']:7.1f} us/call   layer by layer "
            f"{row['layer_by_layer_us_per_call']:7.1f} us/call   plugin / built-in speed {row['ratio']:5.2f}x"
        )
    if "plugin_images_per_s" in row:
        return (
            f"{row['workload']:16s} built-in {row['builtin_images_per_s']:8.0f} img/s   plugin "
            f"{row['plugin_images_per_s']:8.0f} img/s   layer by layer "
            f"{row['layer_by_layer_images_per_s']:8.0f} img/s   plugin / built-in speed {row['ratio']:5.2f}x"
        )
    if "cnntool_us_per_call" in row:
        ort = (
            f"   onnxruntime {row['onnxruntime_us_per_call']:9.1f} us/call ({row['onnxruntime_ratio']:.2f}x)"
            if "onnxruntime_us_per_call" in row else ""
        )  # fmt: skip
        return (
            f"{row['workload']:16s} cnntool {row['cnntool_us_per_call']:9.1f} us/call   "
            f"pytorch {row['pytorch_us_per_call']:9.1f} us/call   ratio {row['ratio']:5.2f}x{ort}"
        )
    return (
        f"{row['workload']:16s} cnntool {row['cnntool_images_per_s']:9.0f} img/s   "
        f"pytorch {row['pytorch_images_per_s']:9.0f} img/s   ratio {row['ratio']:5.2f}x"
    )


def print_report(results: dict) -> None:
    m = results["machine"]
    isa = "AVX2 (held to it)" if m.get("isa") == "avx2" else ("AVX-512" if m.get("avx512") else "AVX2")
    print(
        f"\nmachine: {m['cpu']} ({isa}), {m['cpus']} CPUs, {m['threads']} threads; "
        f"numba {m['numba']}, numpy {m['numpy']}, BLAS {', '.join(m.get('blas', []))}"
    )
    torch_rows = [row for row in results["workloads"] if "cnntool_images_per_s" in row]
    if torch_rows:
        print("\n| workload | cnntool | PyTorch | cnntool / PyTorch |")
        print("|---|---|---|---|")
    for row in torch_rows:
        if "cnntool_us_per_call" in row:
            cells = [
                f"{row[f'{who}_us_per_call']:.1f} µs ({row[f'{who}_images_per_s']:,.0f} img/s)"
                for who in ("cnntool", "pytorch")
            ]
        else:
            cells = [
                f"{row[f'{who}_images_per_s']:,.0f} img/s ({row[f'{who}_us_per_image']:.1f} µs/img)"
                for who in ("cnntool", "pytorch")
            ]
            if row["workload"] in TRAIN_DATA:  # a full-size epoch: its seconds
                cells = [
                    f"{row['images'] / row[f'{who}_images_per_s']:.1f} s per epoch "
                    f"({row[f'{who}_images_per_s']:,.0f} img/s)"
                    for who in ("cnntool", "pytorch")
                ]
        print(f"| {row['workload']} | {cells[0]} | {cells[1]} | {row['ratio']:.2f}x |")
    inference = [row for row in results["workloads"] if "onnxruntime_us_per_call" in row]
    if inference:
        print("\n| inference | cnntool | onnxruntime | onnxruntime time / cnntool time |")
        print("|---|---|---|---|")
        for row in inference:
            cells = [
                f"{row[f'{who}_us_per_call']:.1f} µs ({row[f'{who}_images_per_s']:,.0f} img/s)"
                for who in ("cnntool", "onnxruntime")
            ]
            print(f"| {row['workload']} | {cells[0]} | {cells[1]} | {row['onnxruntime_ratio']:.2f}x |")
    plugin_rows = [row for row in results["workloads"] if "ratio" in row and "spread" in row]
    if plugin_rows:
        print("\n| workload | built-in layers | plugin layers | plugin, layer by layer | plugin / built-in |")
        print("|---|---|---|---|---|")
        for row in plugin_rows:
            unit = "µs" if "builtin_us_per_call" in row else "img/s"
            key = "us_per_call" if unit == "µs" else "images_per_s"
            digits = 1 if unit == "µs" else 0
            cells = [
                f"{row[f'{who}_{key}']:,.{digits}f} {unit}" for who in ("builtin", "plugin", "layer_by_layer")
            ]
            print(f"| {row['workload']} | {cells[0]} | {cells[1]} | {cells[2]} | {row['ratio']:.2f}x |")
    if any("cnntool_losses" in row for row in results["workloads"]):
        print("\nper-epoch training loss, cnntool vs PyTorch (same weights, same data order):")
    for row in results["workloads"]:
        if "cnntool_losses" in row:
            ours = " ".join(f"{v:.5f}" for v in row["cnntool_losses"])
            theirs = " ".join(f"{v:.5f}" for v in row["pytorch_losses"])
            print(
                f"  {row['workload']:16s} cnntool {ours} | pytorch {theirs} | "
                f"max diff {row['max_loss_difference']:.2e} | "
                f"cnntool peak memory {row['cnntool_peak_mb']:.0f} MB"
            )
    if "startup" in results:
        s = results["startup"]
        print(
            f"\ncnntool --help {s['help_seconds']:.2f} s; "
            f"cnntool infer (warm cache) {s['infer_seconds_warm']:.2f} s; "
            f"demo training, 1 epoch: {s['demo_train_1_epoch_cold_seconds']:.1f} s cold (compiling), "
            f"{s['demo_train_1_epoch_warm_seconds']:.1f} s warm"
        )


if __name__ == "__main__":
    main()
