"""One image shared among threads (predict_parts, cnntool.kernels.parts): the barrier, each
`_part` kernel against its whole-image kernel, and networks against layer by layer."""

import threading
import time

import numpy as np
import pytest
from numba import njit

import cnntool
from cnntool.compile import codegen
from cnntool.kernels.conv import (
    conv2d_forward_wide,
    conv2d_forward_wide_part,
    conv2d_relu_pool_wide,
    conv2d_relu_pool_wide_part,
)
from cnntool.kernels.dense import dense_forward, dense_forward_part
from cnntool.kernels.parts import barrier
from cnntool.kernels.winograd import (
    conv2d_forward,
    conv2d_forward_part,
    conv2d_relu_pool,
    conv2d_relu_pool_part,
    plane_shape,
)
from cnntool.system.threads import set_threads
from test_graph import BRANCHES, RESIDUAL


@njit(nogil=True)
def rounds(flags, seen, part, count):
    """Each round: write the round into this part's slot, wait, read the other's."""
    other = 1 - part
    for r in range(count):
        seen[part, 0] = r
        if not barrier(flags, 2):
            return -1
        if seen[other, 0] != r:
            return r  # the other part's write of this round was not visible
        if not barrier(flags, 2):  # nobody writes the next round before both have read
            return -1
    return count


def test_the_barrier_makes_each_round_s_writes_visible_to_the_other_thread():
    flags, seen = np.zeros(2, np.int64), np.zeros((2, 8), np.int64)
    results = [None, None]

    def run(part):
        results[part] = rounds(flags, seen, part, 20000)

    threads = [threading.Thread(target=run, args=(part,)) for part in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [20000, 20000]
    assert flags[0] == 0 and flags[1] == 40000  # every generation released, nobody left waiting


def test_a_barrier_whose_partner_never_comes_gives_up():
    flags = np.zeros(2, np.int64)
    started = time.perf_counter()
    assert not barrier(flags, 2)
    assert 4.0 < time.perf_counter() - started < 30  # MAX_WAIT, 5 s


def conv_case(channels, size, filters, kernel, stride, pad, rng):
    """Arguments of the wide kernels for one image, as cnntool.layers.conv2d sizes them."""
    oh = (size + 2 * pad - kernel) // stride + 1
    hq = oh + (kernel - 1) // stride
    x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    weight = rng.standard_normal((filters, channels, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    padded = np.zeros((stride * stride * channels, hq, hq), np.float32)
    columns = np.zeros((1, channels * kernel * kernel, (oh - 1) * hq + oh), np.float32)
    full = np.zeros((filters, oh * hq), np.float32)
    return oh, x, weight, bias, padded, columns, full


CONVS = [(1, 12, 5, 3, 1, 1), (4, 11, 6, 3, 2, 1), (5, 9, 7, 1, 2, 0), (3, 8, 4, 3, 1, 0), (2, 7, 3, 2, 3, 1)]


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("relu", [0, 1])
def test_the_parts_of_a_wide_convolution_are_the_whole(case, relu, rng):
    _, _, filters, _, stride, pad = case
    oh, x, weight, bias, padded, columns, full = conv_case(*case, rng)
    whole = np.zeros((1, filters, oh, oh), np.float32)
    conv2d_forward_wide(x, weight, bias, 1, 0, relu, stride, stride, pad, pad, padded, columns, full, whole)
    assert np.abs(whole).max() > 0.1
    for parts in (1, 2, 3, oh + 1):  # more parts than rows: some have none
        out = np.full_like(whole, np.nan)
        for part in range(parts):  # one after another: the parts are independent
            conv2d_forward_wide_part(
                x, weight, bias, 1, 0, relu, stride, stride, pad, pad, padded, columns, full, out, part, parts
            )  # fmt: skip
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5, err_msg=f"{parts} parts")


@pytest.mark.parametrize("case", [(2, 12, 3, 3, 1, 1), (3, 13, 4, 3, 1, 0)])
def test_the_parts_of_a_convolution_relu_pool_are_the_whole(case, rng):
    _, _, filters, _, stride, pad = case
    oh, x, weight, bias, padded, columns, full = conv_case(*case, rng)
    whole = np.zeros((1, filters, oh // 2, oh // 2), np.float32)
    conv2d_relu_pool_wide(x, weight, bias, 1, stride, stride, pad, pad, padded, columns, full, whole)
    assert whole.max() > 0.1
    for parts in (1, 2, 3):
        out = np.full_like(whole, np.nan)
        for part in range(parts):
            conv2d_relu_pool_wide_part(
                x, weight, bias, 1, stride, stride, pad, pad, padded, columns, full, out, part, parts
            )  # fmt: skip
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5, err_msg=f"{parts} parts")


@pytest.mark.parametrize("size, min_images", [(10, 1), (7, 1), (17, 1), (7, 2)])
def test_the_parts_of_a_winograd_convolution_are_the_whole(size, min_images, rng):
    """Winograd by tile rows (min_images 1, at least 4 tile rows a part: 17x17 in 2 parts)
    or by output channels (fewer: 7x7 and 10x10 in 2 parts, 17x17 in 3, 5 parts for 4
    filters), or the wide product's rows for an image too small for Winograd (min_images 2)."""
    oh, x, weight, bias, padded, columns, full = conv_case(3, size, 4, 3, 1, 1, rng)
    scratch = winograd_scratch(3, 4, oh, padded, columns, full)
    whole = np.zeros((1, 4, oh, oh), np.float32)
    conv2d_forward(x, weight, bias, 1, 0, 1, 1, 1, 1, 1, min_images, *scratch, whole)
    for parts in (1, 2, 3, 5):
        out = np.full_like(whole, np.nan)
        for part in range(parts):
            conv2d_forward_part(x, weight, bias, 1, 0, 1, 1, 1, 1, 1, min_images, *scratch, out, part, parts)
        if parts == 1:
            np.testing.assert_array_equal(out, whole)  # the same products
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5, err_msg=f"{parts} parts")


def winograd_scratch(channels, filters, oh, padded, columns, full):
    """The scratch of the Winograd kernels, as cnntool.layers.conv2d sizes it."""
    tiles = (oh + 1) // 2
    seen = np.zeros((filters, channels, 3, 3), np.float32)
    u = np.zeros(plane_shape(filters, channels), np.float32)
    tiles_padded = np.zeros((channels, 2 * tiles + 2, 2 * tiles + 2), np.float32)
    v = np.zeros(plane_shape(channels, tiles * tiles), np.float32)
    m = np.zeros(plane_shape(filters, tiles * tiles), np.float32)
    return padded, columns, full, seen, u, tiles_padded, v, m


@pytest.mark.parametrize("size, pad, min_images", [(12, 1, 1), (13, 0, 1), (9, 1, 1), (18, 1, 1), (7, 1, 2)])
def test_a_winograd_convolution_relu_pool_is_the_wide_one_and_its_parts_the_whole(size, pad, min_images, rng):
    """Winograd's pooled output transform (every pooling window one output tile; an odd
    output drops its last row and column of tiles) against the wide kernel, and its parts
    (pooled rows) against the whole."""
    oh, x, weight, bias, padded, columns, full = conv_case(3, size, 4, 3, 1, pad, rng)
    scratch = winograd_scratch(3, 4, oh, padded, columns, full)
    wide = np.zeros((1, 4, oh // 2, oh // 2), np.float32)
    conv2d_relu_pool_wide(x, weight, bias, 1, 1, 1, pad, pad, padded, columns, full, wide)
    assert wide.max() > 0.1 and (wide == 0).any()  # the ReLU cut some
    whole = np.full_like(wide, np.nan)
    conv2d_relu_pool(x, weight, bias, 1, 1, 1, pad, pad, min_images, *scratch, whole)
    np.testing.assert_allclose(whole, wide, rtol=1e-5, atol=1e-5)
    for parts in (1, 2, 3, oh):
        out = np.full_like(wide, np.nan)
        for part in range(parts):
            conv2d_relu_pool_part(x, weight, bias, 1, 1, 1, pad, pad, min_images, *scratch, out, part, parts)
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5, err_msg=f"{parts} parts")


def test_the_parts_of_a_dense_layer_are_the_whole(rng):
    x = rng.standard_normal((1, 37)).astype(np.float32)
    weight = rng.standard_normal((11, 37)).astype(np.float32)
    bias = rng.standard_normal(11).astype(np.float32)
    whole = np.zeros((1, 11), np.float32)
    dense_forward(x, weight, bias, 1, whole)
    for parts in (1, 2, 3, 12):
        out = np.full_like(whole, np.nan)
        for part in range(parts):
            dense_forward_part(x, weight, bias, 1, out, part, parts)
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5, err_msg=f"{parts} parts")


POOLED = {
    "name": "pooled",
    "input_shape": [1, 14, 14],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 5},
        {"type": "relu"},
        {"type": "dense", "units": 3},
    ],
}


@pytest.mark.parametrize("spec", [RESIDUAL, BRANCHES, POOLED], ids=lambda spec: spec["name"])
def test_one_image_shared_among_threads_is_the_image_layer_by_layer(spec, monkeypatch, rng):
    """Every network gets predict_parts here (the FLOPs floor at 0): its parts on 2 and 3
    threads compute what the network computes layer by layer, the same on every call."""
    monkeypatch.setattr(codegen, "PARTS_MIN_FLOPS", 0)
    plain = cnntool.Network.from_spec(spec, seed=3)
    plain.use_plan = False
    x = rng.standard_normal((1, *plain.input_shape)).astype(np.float32)
    expected = plain.predict_proba(x)
    try:
        for threads in (2, 3):
            set_threads(threads)
            net = cnntool.Network.from_spec(spec, seed=3)
            assert hasattr(net.plan.module, "predict_parts")
            probs = net.predict_proba(x)
            assert net.plan.workspaces.keys() == set(range(threads))  # each part its scratch
            np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
            for _ in range(20):
                np.testing.assert_array_equal(net.predict_proba(x), probs)
            np.testing.assert_allclose(net.plan.predict_in_one_part(x), expected, rtol=1e-5, atol=1e-6)
    finally:
        set_threads(None)


def test_small_networks_predict_one_image_on_one_thread(root):
    """Below PARTS_MIN_FLOPS the barriers cost more than the threads save: the plan has
    predict_parts (its code does not depend on the shapes) but does not use it, and never
    compiles it."""
    import json

    from cnntool.model.parts import SharedImage

    seed = cnntool.Network.from_spec(json.loads((root / "models/seed_cnn.json").read_text()))
    assert not seed.plan.uses_parts and hasattr(seed.plan.module, "predict_parts")
    set_threads(2)
    try:
        seed.predict_proba(np.zeros((1, *seed.input_shape), np.float32))
        assert not isinstance(seed.runner("predict", 1), SharedImage)
        assert seed.plan.module.predict_parts.signatures == []
        assert "predict_parts" not in seed.plan.child_functions()
    finally:
        set_threads(None)


def test_a_pool_thread_predicting_one_image_does_not_wait_for_itself(monkeypatch, rng):
    """From one of cnntool's own pool threads the parts would wait for a thread that is busy
    running them: the image is computed on that thread alone. serve's kernel threads (named
    cnntool-kernels) are not pool threads and share the image."""
    from cnntool.system.threads import run_parallel

    monkeypatch.setattr(codegen, "PARTS_MIN_FLOPS", 0)
    set_threads(2)
    try:
        net = cnntool.Network.from_spec(POOLED, seed=3)
        x = rng.standard_normal((1, *net.input_shape)).astype(np.float32)
        expected = net.predict_proba(x)
        in_pool = run_parallel([lambda: None, lambda: net.predict_proba(x)])[1]
        np.testing.assert_allclose(in_pool, expected, rtol=1e-5, atol=1e-6)
        results = []
        named = threading.Thread(
            target=lambda: results.append(net.predict_proba(x)), name="cnntool-kernels_0"
        )
        named.start()
        named.join()
        np.testing.assert_array_equal(results[0], expected)  # shared among the threads, as here
    finally:
        set_threads(None)


def part_threads():
    return [t for t in threading.enumerate() if t.name.startswith("cnntool-pool-part-")]


def test_the_parts_sleep_between_distant_images_wake_for_the_next_and_stop_with_their_runner(
    monkeypatch, rng
):
    """The parts past the first wait inside the compiled code between images, sleep after
    IDLE seconds without one, and the next image wakes them (the same answer whether they
    were awake or asleep). Dropping the runner (a workspace grew) stops their threads."""
    from cnntool.kernels.parts import IDLE

    monkeypatch.setattr(codegen, "PARTS_MIN_FLOPS", 0)
    set_threads(3)
    try:
        net = cnntool.Network.from_spec(POOLED, seed=3)
        x = rng.standard_normal((1, *net.input_shape)).astype(np.float32)
        expected = net.predict_proba(x)
        runner = net.runner("predict", 1)
        assert [t.name for t in runner.threads] == ["cnntool-pool-part-1", "cnntool-pool-part-2"]
        assert all(t.is_alive() and t in part_threads() for t in runner.threads)
        for pause in (0.0, 4 * IDLE, 0.0, 4 * IDLE):
            time.sleep(pause)
            if pause:
                assert all(runner.asleep[1:])  # asleep in Python, not spinning
            np.testing.assert_array_equal(net.predict_proba(x), expected)
        assert runner.control[0] == 5 and list(runner.control[2:]) == [0, 5, 5]  # every image taken
        threads = runner.threads
        del runner
        net.predict_proba(np.zeros((2, *net.input_shape), np.float32))  # a larger batch...
        net.predict_proba(np.zeros((64, *net.input_shape), np.float32))  # ...grows the workspace
        np.testing.assert_array_equal(net.predict_proba(x), expected)  # a new runner
        for thread in threads:
            thread.join(timeout=5)
            assert not thread.is_alive()
    finally:
        set_threads(None)


def test_two_threads_predicting_at_once_take_turns_with_the_parts(monkeypatch, rng):
    """Two threads calling predict_proba on one image each at once: the parts share one
    set of activations, so the second waits for the first's image; both get the image's
    answer (computing the second alone beside the first, as before, mixed their activations:
    wrong answers in 4 runs of 6)."""
    monkeypatch.setattr(codegen, "PARTS_MIN_FLOPS", 0)
    set_threads(2)
    try:
        net = cnntool.Network.from_spec(RESIDUAL, seed=3)
        images = rng.standard_normal((2, 1, *net.input_shape)).astype(np.float32)
        expected = [net.predict_proba(image) for image in images]
        failures = []

        def predict(k):
            for _ in range(200):
                if not np.allclose(net.predict_proba(images[k]), expected[k], rtol=1e-5, atol=1e-6):
                    failures.append(k)

        threads = [threading.Thread(target=predict, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
    finally:
        set_threads(None)
