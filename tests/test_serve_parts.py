"""The parts of `cnntool serve` in-process: micro-batching, request bodies, metrics text, and
readiness before the model is loaded (the app itself, driven through its ASGI interface)."""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import cnntool
from cnntool.data import preprocess
from cnntool.errors import InputError
from cnntool.serve import ServeSettings, create_app
from cnntool.serve.batching import MicroBatcher
from cnntool.serve.inputs import json_inputs
from cnntool.serve.metrics import Counter, Histogram, ServerMetrics

MNIST = (1, 28, 28)
PREPROCESSING = {"pixel_scale": 1 / 255, "mean": 0.0, "std": 1.0}


class RecordingNetwork:
    """Doubles its input; records each batch's size, thread, and whether two ever overlapped."""

    def __init__(self):
        self.sizes, self.threads, self.active, self.overlapped = [], set(), 0, False

    def __call__(self, x):
        self.active += 1
        self.overlapped |= self.active > 1
        self.sizes.append(len(x))
        self.threads.add(threading.get_ident())
        time.sleep(0.001)
        self.active -= 1
        return x * 2


def run_batched(requests, max_batch, max_wait=0.0):
    network = RecordingNetwork()

    async def main():
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(network, executor, max_batch=max_batch, max_wait=max_wait)
            try:
                return await asyncio.gather(*(batcher.predict(x) for x in requests))
            finally:
                await batcher.close()

    return asyncio.run(main()), network


def test_waiting_requests_share_batches_up_to_the_limit():
    requests = [np.full((1, 3), i, np.float32) for i in range(10)]
    results, network = run_batched(requests, max_batch=4)
    assert network.sizes == [4, 4, 2]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 3), 2 * i, np.float32))
    assert len(network.threads) == 1 and not network.overlapped


def test_a_request_that_would_overflow_a_batch_waits_for_the_next():
    sizes = [3, 3, 1, 5, 2]
    requests = [np.full((n, 2), i, np.float32) for i, n in enumerate(sizes)]
    results, network = run_batched(requests, max_batch=4)
    assert network.sizes == [3, 4, 5, 2]  # [3], [3+1], [5] alone (over the limit), [2]
    assert [r.shape[0] for r in results] == sizes
    for i, result in enumerate(results):
        assert (result == 2 * i).all()


def test_a_lone_request_waits_at_most_max_wait_and_then_runs_alone():
    results, network = run_batched([np.ones((1, 2), np.float32)], max_batch=64, max_wait=0.05)
    assert network.sizes == [1]
    np.testing.assert_array_equal(results[0], np.full((1, 2), 2, np.float32))


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def network(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("kernel failed")
        return x + 1

    async def main():
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(network, executor, max_batch=8, max_wait=0.0)
            first = await asyncio.gather(
                *(batcher.predict(np.zeros((1, 1))) for _ in range(3)), return_exceptions=True
            )
            second = await batcher.predict(np.zeros((1, 1)))
            await batcher.close()
            return first, second

    first, second = asyncio.run(main())
    assert [str(error) for error in first] == ["kernel failed"] * 3
    np.testing.assert_array_equal(second, [[1.0]])


# --- JSON inputs --------------------------------------------------------------------------


def test_each_json_input_is_scaled_by_its_own_values(rng):
    pixels = rng.integers(0, 256, MNIST, dtype=np.uint8)
    unit = (pixels / 255).astype(np.float32)
    body = json.dumps({"inputs": [pixels.tolist(), unit.tolist(), pixels[0].astype(float).tolist()]})
    model_input = json_inputs(body.encode(), MNIST, PREPROCESSING)
    assert model_input.shape == (3, *MNIST) and model_input.dtype == np.float32
    expected = preprocess(pixels[np.newaxis], PREPROCESSING)
    np.testing.assert_allclose(model_input, np.concatenate([expected] * 3), rtol=1e-6)
    np.testing.assert_allclose(model_input[0], pixels / 255, rtol=1e-6)


def test_recorded_mean_and_std_apply():
    preprocessing = {"pixel_scale": 1 / 255, "mean": 0.5, "std": 0.25}
    body = json.dumps({"inputs": [[[255] * 28] * 28, [[0.0] * 28] * 28]}).encode()
    model_input = json_inputs(body, MNIST, preprocessing)
    np.testing.assert_allclose(model_input[0], 2.0)
    np.testing.assert_allclose(model_input[1], -2.0)


def test_colour_inputs_need_all_three_axes():
    body = json.dumps({"inputs": [[[0] * 4] * 4]}).encode()
    with pytest.raises(InputError, match=r"^inputs\[0\]: has shape \(4, 4\); expected \(3, 4, 4\)$"):
        json_inputs(body, (3, 4, 4), PREPROCESSING)


def test_deeply_nested_json_is_a_client_error():
    with pytest.raises(InputError, match=r"^malformed JSON"):
        json_inputs(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", MNIST, PREPROCESSING)


# --- metrics text ---------------------------------------------------------------------------


def test_counter_and_histogram_text():
    counter = Counter("requests_total", "Requests.", ("route",))
    counter.inc('/a"b\\c\n')
    counter.inc('/a"b\\c\n', amount=2)
    assert list(counter.samples()) == ['requests_total{route="/a\\"b\\\\c\\n"} 3']
    histogram = Histogram("size", "Sizes.", (1, 4))
    assert list(histogram.samples())[-1] == "size_count 0"
    for value in (1, 3, 3, 9):
        histogram.observe(value)
    assert list(histogram.samples()) == [
        'size_bucket{le="1"} 1',
        'size_bucket{le="4"} 3',
        'size_bucket{le="+Inf"} 4',
        "size_sum 16",
        "size_count 4",
    ]


def test_server_metrics_start_at_zero():
    text = ServerMetrics().render()
    assert "cnntool_predictions_total 0\n" in text
    assert "cnntool_model_ready 0\n" in text
    assert "cnntool_batch_size_count 0\n" in text
    assert "# TYPE cnntool_request_duration_seconds histogram\n" in text


def local_settings(bundle: str, **changes) -> ServeSettings:
    """Settings of a one-worker, one-thread server on loopback, with `changes`."""
    options = {
        "bundles": [bundle], "host": "127.0.0.1", "port": 0, "workers": 1, "threads": 1,
        "max_body_bytes": 1 << 20, "max_batch": 8, "max_wait_ms": 1.0, "access_log": False,
    }  # fmt: skip
    return ServeSettings(**{**options, **changes})


# --- readiness --------------------------------------------------------------------------------


def test_not_ready_until_the_model_is_loaded_and_warmed_up(tmp_path, seed_spec_path):
    path = cnntool.save_bundle(cnntool.Network.from_spec(seed_spec_path, seed=0), tmp_path / "seed.cnnb")
    settings = local_settings(str(path), ready_wait_s=0.2)
    app = create_app(settings)
    loading = {"error": "the model is still loading; retry when /readyz answers 200"}

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # Before start-up has run, the process is alive but nothing can be predicted.
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            for response in (
                await client.get("/readyz"),
                await client.get("/v1/model"),
                await client.post("/v1/predict", json={"inputs": [[[0] * 28] * 28]}),
            ):
                assert (response.status_code, response.json()) == (503, loading)
            assert "cnntool_model_ready 0\n" in (await client.get("/metrics")).text
            async with app.router.lifespan_context(app):
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.05)
                response = await client.post("/v1/predict", json={"inputs": [[[0] * 28] * 28]})
                assert response.status_code == 200
                assert "cnntool_model_ready 1\n" in (await client.get("/metrics")).text
                assert (await client.get("/v1/model")).json()["digest"] == cnntool.load_bundle(path).digest

    asyncio.run(main())


def test_a_bundle_that_fails_to_load_keeps_the_server_unready(tmp_path):
    settings = local_settings(str(tmp_path / "gone.cnnb"))
    app = create_app(settings)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            app.router.lifespan_context(app),
        ):
            while app.state.models.failure is None:
                await asyncio.sleep(0.05)
            return await client.get("/readyz")

    response = asyncio.run(main())
    assert response.status_code == 503
    assert response.json()["error"].startswith(f"cannot serve {tmp_path / 'gone.cnnb'}: ")


def test_a_request_during_start_up_waits_for_the_model(tmp_path, seed_spec_path):
    path = cnntool.save_bundle(cnntool.Network.from_spec(seed_spec_path, seed=0), tmp_path / "seed.cnnb")
    settings = local_settings(str(path))
    app = create_app(settings)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            app.router.lifespan_context(app),
        ):
            # Sent at once, before warm-up has finished: answered when the model is ready.
            assert not app.state.models.ready
            return await client.post("/v1/predict", json={"inputs": [[[0] * 28] * 28]})

    response = asyncio.run(main())
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1
