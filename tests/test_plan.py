"""The compiled plan against the layer-by-layer path, threads, BLAS wrapper and caching."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cnntool
from cnntool.kernels.blas import NO, YES, gemm

SPECS = {
    "seed": "models/seed_cnn.json",
    "mixed": {
        "input_shape": [3, 11, 10],
        "layers": [
            {"type": "conv2d", "filters": 5, "kernel_size": 3, "padding": "same"},
            {"type": "relu"},
            {
                "type": "conv2d",
                "filters": 4,
                "kernel_size": (2, 3),
                "stride": 2,
                "padding": 1,
                "use_bias": False,
            },
            {"type": "maxpool2d", "pool_size": 2, "stride": 1},
            {"type": "flatten"},
            {"type": "dense", "units": 6},
            {"type": "relu"},
            {"type": "dense", "units": 4, "use_bias": False},
            {"type": "softmax"},
        ],
    },
    # A convolution large enough for Winograd in batches, with its ReLU fused in.
    "winograd": {
        "input_shape": [16, 20, 19],
        "layers": [
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": 1},
            {"type": "relu"},
            {"type": "maxpool2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 5},
        ],
    },
}


def build(spec, root, fuse):
    spec = str(root / spec) if isinstance(spec, str) else spec
    net = cnntool.Network.from_spec(spec, seed=4)
    net.use_plan = fuse
    return net


@pytest.mark.parametrize("name", list(SPECS))
def test_plan_matches_layer_by_layer(name, root, rng):
    fused, plain = build(SPECS[name], root, True), build(SPECS[name], root, False)
    assert fused.plan is not None and plain.plan is None
    x = rng.random((5, *fused.input_shape), dtype=np.float32)
    labels = rng.integers(0, fused.output_shape[0], 5)
    for training in (False, True):
        np.testing.assert_allclose(
            fused.forward(x, training=training), plain.forward(x, training=training), rtol=1e-5, atol=1e-6
        )
    grad = rng.standard_normal((5, fused.output_shape[0])).astype(np.float32)
    np.testing.assert_allclose(fused.backward(grad), plain.backward(grad), rtol=1e-4, atol=1e-6)
    for key, value in plain.grads().items():
        np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(fused.predict_proba(x), plain.predict_proba(x), rtol=1e-5, atol=1e-7)
    a = fused.train_step(x, labels.astype(np.int64))
    b = plain.train_step(x, labels.astype(np.int64))
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]
    for key, value in plain.grads().items():
        np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    predictions = np.empty(5, np.int64)
    _, correct = fused.evaluate_batch(x, labels.astype(np.int64), predictions)
    np.testing.assert_array_equal(predictions, plain.forward(x).argmax(axis=1))
    assert correct == int((predictions == labels).sum())


def test_parameters_live_in_one_flat_array(root):
    net = build(SPECS["seed"], root, True)
    flat = net.flat_params
    for value in net.params().values():
        assert np.shares_memory(value, flat)
        assert value.ctypes.data % 64 == 0
    net.params()["dense_1.bias"][:] = 7
    assert (flat == 7).sum() == 10


def test_batch_split_across_threads_matches_one_thread(root, rng):
    from cnntool.system.threads import set_threads

    x = rng.random((40, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 40).astype(np.int64)
    results = {}
    try:
        for threads in (1, 2):
            set_threads(threads)
            net = build(SPECS["seed"], root, True)
            loss, correct = net.train_step(x, labels)
            results[threads] = (loss, correct, net.flat_grads.copy(), net.predict_proba(x))
    finally:
        set_threads(None)
    assert results[1][0] == pytest.approx(results[2][0], rel=1e-5)
    assert results[1][1] == results[2][1]
    np.testing.assert_allclose(results[1][2], results[2][2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(results[1][3], results[2][3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "m,n,k", [(1, 7, 5), (3, 1, 9), (1, 1, 1), (5, 6, 2), (2, 3, 30), (7, 9, 11), (4, 2, 50)]
)
def test_gemm_matches_numpy(m, n, k, rng):
    for trans_a in (NO, YES):
        for trans_b in (NO, YES):
            a = rng.standard_normal((m, k) if trans_a == NO else (k, m)).astype(np.float32)
            b = rng.standard_normal((k, n) if trans_b == NO else (n, k)).astype(np.float32)
            c0 = rng.standard_normal((m, n)).astype(np.float32)
            for beta in (0.0, 1.0, 0.5):
                c = c0.copy()
                gemm(
                    trans_a,
                    trans_b,
                    m,
                    n,
                    k,
                    0.7,
                    a.ravel(),
                    a.shape[1],
                    b.ravel(),
                    b.shape[1],
                    beta,
                    c.ravel(),
                    n,
                )
                expected = 0.7 * (a if trans_a == NO else a.T) @ (b if trans_b == NO else b.T) + beta * c0
                np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)


def test_gemm_with_offsets_and_row_strides(rng):
    big = rng.standard_normal((6, 10)).astype(np.float32)
    other = rng.standard_normal((4, 9)).astype(np.float32)
    out = np.zeros((3, 12), np.float32)
    # A = big[1:4, 2:7] (3x5, row stride 10), B = other[0:5?] -> use other.T rows: B = other[:, 1:6].T (5x4)
    gemm(NO, YES, 3, 4, 5, 1.0, big.ravel()[12:], 10, other.ravel()[1:], 9, 0.0, out.ravel()[3:], 12)
    np.testing.assert_allclose(out[:, 3:7], big[1:4, 2:7] @ other[:, 1:6].T, rtol=1e-5, atol=1e-5)
    assert not out[:, :3].any() and not out[:, 7:].any()


CACHE_PROGRAM = """
import json, numpy as np, cnntool
from cnntool.kernels import winograd
spec = json.load(open({spec!r}))
spec["layers"][0]["filters"] = {filters}
net = cnntool.Network.from_spec(spec, seed=0)
net.train_step(np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64))
net.layers[0].forward(np.zeros((2, 1, 28, 28), np.float32))  # a kernel called on its own
step = net.plan.module.train_step
kernel = winograd.conv2d_forward
print(json.dumps({{"hits": sum(step.stats.cache_hits.values()),
                   "misses": sum(step.stats.cache_misses.values()),
                   "kernel_hits": sum(kernel.stats.cache_hits.values()),
                   "kernel_misses": sum(kernel.stats.cache_misses.values())}}))
"""


def test_second_process_loads_compiled_code_from_the_cache(tmp_path, root):
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
        "CNNTOOL_CACHE_DIR": str(tmp_path / "cnntool"),
    }
    runs = [
        json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CACHE_PROGRAM.format(spec=str(root / "models/seed_cnn.json"), filters=f),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout
        )
        for f in (8, 8, 11)
    ]
    assert runs[0]["misses"] == 1 and runs[0]["hits"] == 0
    assert runs[1]["misses"] == 0 and runs[1]["hits"] == 1
    assert runs[1]["kernel_hits"] == 1 and runs[1]["kernel_misses"] == 0
    # Sizes are arguments of the compiled code, not part of it: a network never seen, of
    # the same structure, compiles nothing.
    assert runs[2]["misses"] == 0 and runs[2]["hits"] == 1
    assert len(list((tmp_path / "cnntool" / "plans").glob("cnntool_plan_*.py"))) == 1


def test_networks_of_one_structure_share_one_module(root):
    """Other widths, image sizes and classes, including sizes that change how a convolution
    computes (kept or rebuilt columns, Winograd or not, in training and for one image) and
    whether one image is shared among threads: the same code, those choices being numbers."""
    spec = json.loads((root / "models/mnist_cnn.json").read_text())
    sources, kinds = set(), set()
    for first, second, classes, height in ((32, 64, 10, 28), (8, 8, 4, 30), (4, 16, 7, 14), (16, 40, 3, 12)):
        spec["layers"][0]["filters"], spec["layers"][2]["filters"] = first, second
        spec["layers"][-1]["units"], spec["classes"] = classes, [str(k) for k in range(classes)]
        spec["input_shape"] = [1, height, 28]
        net = cnntool.Network.from_spec(spec)
        conv = net.layers[2]
        kinds.add((conv.keep_columns, conv.winograd, conv.winograd_inference, conv.winograd_min_images,
                   net.plan.uses_parts))  # fmt: skip
        sources.add(net.plan.source)
    assert len(kinds) == 4  # every network computes its second convolution another way
    assert len(sources) == 1


def test_warmup_command_compiles_every_function(tmp_path, root):
    from typer.testing import CliRunner

    from cnntool.cli import app

    result = CliRunner().invoke(
        app, ["warmup", str(root / "models/seed_cnn.json"), "--batch-size", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["compiled"] is True
    assert set(report["steps"]) == {
        f"{name}@{n}" for name in ("train_step", "evaluate", "predict", "forward", "backward") for n in (1, 4)
    }


def test_training_steps_allocate_no_arrays(root):
    """After the first batch, a training step allocates nothing the size of a batch: the
    batch buffer, every activation and gradient are reused (a 64-image float batch alone
    would be 200 kB)."""
    import tracemalloc

    from cnntool.data import load_dataset
    from cnntool.training.loop import BatchSource

    sample = load_dataset("mnist-sample")
    net = build(SPECS["seed"], root, True)
    optimizer = cnntool.optim.SGD(net, lr=0.01, momentum=0.9)
    source = BatchSource(sample.x_train, sample.y_train, {"pixel_scale": 1 / 255, "mean": 0.0, "std": 1.0})
    order = np.arange(len(source))

    def steps(count):
        for k in range(count):
            xb, yb = source.batch(order, (k * 64) % 3000, 64)
            net.train_step(xb, yb)
            optimizer.step()

    steps(3)
    tracemalloc.start()
    steps(50)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} bytes allocated at the peak of 50 training steps"


def test_one_workspace_per_thread_whatever_the_batch_sizes(root, rng):
    from cnntool.system.threads import set_threads

    set_threads(1)
    try:
        net = build(SPECS["seed"], root, True)
        x = rng.random((40, 1, 28, 28), dtype=np.float32)
        small = net.predict_proba(x[:3])
        for n in (1, 7, 40, 2, 33):  # growing and shrinking batches
            np.testing.assert_allclose(net.predict_proba(x[:n])[:1], small[:1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(net.predict_proba(x[:3]), small, rtol=1e-6)
        assert list(net.plan.workspaces) == [0]
        assert net.plan.workspaces[0].n == 40
        np.testing.assert_allclose(net.predict_proba(x)[:3], small, rtol=1e-5, atol=1e-7)
    finally:
        set_threads(None)


def test_kernel_calls_are_checked_against_the_kernel_signature():
    from cnntool.kernels.activation import relu_forward
    from cnntool.layers import Call, X, buf

    call = Call(relu_forward, out=buf("out"), x=X)
    kernel, args = call
    assert kernel is relu_forward and args == (X, buf("out"))  # in the kernel's order
    with pytest.raises(TypeError, match=r"kernel relu_forward\(x, out\): missing out; unknown output"):
        Call(relu_forward, x=X, output=buf("out"))


def test_a_kernel_of_more_arguments_than_a_plan_can_pass_is_refused_when_declared():
    """A call of 31 arguments compiles in Python into a form numba cannot read; the layer
    declaring it hears so, not the plan compiler minutes later."""
    from cnntool.layers import Call, X

    names = [f"a{k}" for k in range(31)]
    namespace: dict = {}
    exec(f"def wide({', '.join(names)}): pass", namespace)
    expected = r"^kernel wide takes 31 parameters; a compiled plan can pass at most 30 "
    with pytest.raises(TypeError, match=expected):
        Call(namespace["wide"], **dict.fromkeys(names, X))
    names.pop()
    exec(f"def thirty({', '.join(names)}): pass", namespace)
    assert len(Call(namespace["thirty"], **dict.fromkeys(names, X)).args) == 30
