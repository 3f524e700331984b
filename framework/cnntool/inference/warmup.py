"""Compiling ahead, the one place that does it: run a network's compiled functions once, so that
numba compiles them (or loads them from its cache) now rather than in the middle of training
or of a request. `cnntool warmup`, `infer`, `serve` (`warm_requests`) and training
(`compile_in_child`, `compile_for_training`) all come here."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnntool.bundle import load_bundle
from cnntool.compile.cache import is_cached
from cnntool.data import preprocess
from cnntool.model.network import Network
from cnntool.model.spec import is_spec_file
from cnntool.system.threads import ensure_threads


def load_network(source: Any) -> Any:
    """A network from a spec (JSON file, text or dict) or from a bundle file."""

    if isinstance(source, (str, Path)) and Path(source).is_file() and not is_spec_file(source):
        return load_bundle(source).network
    return Network.from_spec(source)


def warm_up(net: Any, batch_size: int = 32) -> dict[str, float]:
    """Train, evaluate and predict once on zeros at batch size 1 and `batch_size`; returns
    the seconds each took (the first is the compile, or the cache load)."""

    ensure_threads()
    timings = {}
    for n in sorted({1, batch_size}):
        for name, seconds in warm_batch(net, n).items():
            timings[f"{name}@{n}"] = seconds
    net.flat_grads.fill(0.0)
    return timings


def compile_for_training(net: Any, optimizer: Any, batch_size: int) -> None:
    """Compile (or load from the cache) what a training epoch runs: `train_step` and
    `evaluate` on a batch of zeros, and the optimizer's update; the network and the
    optimizer are left as they were (weights, batch statistics, dropout step, slots, step
    count; gradients zeroed)."""

    ensure_threads()
    random, params, state = net.random.copy(), net.flat_params.copy(), net.flat_state.copy()
    slots = {name: flat.copy() for name, flat in optimizer.flat_slots.items()}
    steps = optimizer.steps
    x = np.zeros((batch_size, *net.input_shape), np.float32)
    labels = np.zeros(batch_size, np.int64)
    net.train_step(x, labels)
    optimizer.step()
    net.evaluate_batch(x, labels, np.empty(batch_size, np.int64))
    net.random[:] = random
    np.copyto(net.flat_params, params)
    np.copyto(net.flat_state, state)
    for name, flat in optimizer.flat_slots.items():
        np.copyto(flat, slots[name])
    optimizer.steps = steps
    net.flat_grads.fill(0.0)


def warm_batch(net: Any, n: int, only: tuple[str, ...] | None = None) -> dict[str, float]:
    """Seconds each compiled function (or each of `only`) takes on a batch of n zeros."""
    x = np.zeros((n, *net.input_shape), np.float32)
    labels = np.zeros(n, np.int64)
    tasks = {
        "train_step": lambda: net.train_step(x, labels),
        "evaluate": lambda: net.evaluate_batch(x, labels, np.empty(n, np.int64)),
        "predict": lambda: net.predict_proba(x),
        "forward": lambda: net.forward(x, training=True),
        "backward": lambda: net.backward(np.zeros((n, net.output_shape[0]), np.float32)),
    }
    if net.plan is not None and net.plan.parts:  # what a batch cut across threads runs
        tasks["train_parts"] = lambda: net.plan.train_in_parts(x, labels, 1.0)
    if net.plan is not None and net.plan.uses_parts:  # one image, threads
        tasks["predict_parts"] = lambda: net.plan.predict_in_one_part(x[:1])
    timings = {}
    for name, task in tasks.items():
        if only is not None and name not in only:
            continue
        started = time.perf_counter()
        task()
        timings[name] = time.perf_counter() - started
    return timings


CHILD_PROGRAM = """
import json, sys
from cnntool.model.network import Network
from cnntool.inference.warmup import warm_batch
net = Network.from_spec(json.loads(sys.stdin.read()))
warm_batch(net, 2, net.plan.child_functions())
"""


def compile_in_child(net: Any) -> None:
    """Compile what training and its predictions run of the network's plan
    (Plan.child_functions) into numba's cache in a child process, unless it is there already. A
    network the child cannot rebuild from its spec (layer types given to this process
    alone) compiles in this process instead, when it is first used."""
    if net.plan is None or is_cached(net.plan.module, net.plan.child_functions()):
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [sys.executable, "-c", CHILD_PROGRAM], input=json.dumps(net.spec_dict()), text=True,
            capture_output=True, timeout=1800, check=False,
        )  # fmt: skip


def warm_requests(bundle: Any, sizes: list[int]) -> None:
    """Predict once on blank raw inputs (uint8, through the bundle's preprocessing) at each
    batch size, so that what a request runs is compiled and the workspace made for the largest
    batch before traffic comes (`cnntool serve`)."""
    for size in sizes:
        blank = np.zeros((size, *bundle.network.input_shape), np.uint8)
        bundle.network.predict_proba(preprocess(blank, bundle.preprocessing))
