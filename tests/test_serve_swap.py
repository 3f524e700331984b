"""A bundle file replaced under a running `cnntool serve`, and SIGTERM under load.

Clients keep predicting while the file is replaced by an atomic rename (as `cnntool train`
writes): the new model takes over within seconds, and no request fails or gets an answer of
neither model. A damaged replacement is refused with a log line and the old model keeps
serving. SIGTERM while requests are in flight answers them all before the process exits.
"""

import json
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

import cnntool
from cnntool.inference.predict import predict_raw
from test_serve import Server

SAMPLES = 4


@pytest.fixture(scope="module")
def digits():
    return cnntool.load_dataset("mnist-sample").x_test[:SAMPLES, 0]


def answers(bundle_path, digits):
    bundle = cnntool.load_bundle(bundle_path)
    probabilities = predict_raw(bundle.network, digits[:, np.newaxis], bundle.preprocessing)
    return [bundle.network.classes[i] for i in probabilities.argmax(axis=1)]


class Clients:
    """`count` threads predicting the digits again and again until stopped; every answer kept."""

    def __init__(self, url, digits, count=3):
        self.url, self.body = url, {"inputs": digits.tolist()}
        self.results, self.errors, self.running = [], [], True
        self.threads = [threading.Thread(target=self.loop) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def loop(self):
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while self.running:
                try:
                    response = client.post("/v1/predict", json=self.body)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                labels = [p["label"] for p in response.json()["predictions"]] if response.is_success else None
                self.results.append((response.status_code, labels))

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join()
        return self.results


def replace(path, data):
    """Write `data` beside `path`, then rename it over `path`: the way `cnntool train` saves."""
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_replaced_bundle_is_swapped_in_without_failing_requests(root, tmp_path, digits):
    seed, fashion = root / "models/mnist_seed.cnnb", root / "models/fashion.cnnb"
    served = tmp_path / "model.cnnb"
    served.write_bytes(seed.read_bytes())
    before, after = answers(seed, digits), answers(fashion, digits)
    assert before != after
    server = Server(served, tmp_path, "--no-access-log")
    clients = Clients(server.url, digits)
    try:
        wait_for(lambda: len(clients.results) >= 20)
        replaced_at = len(clients.results)
        replace(served, fashion.read_bytes())
        new_digest = cnntool.load_bundle(fashion).digest
        wait_for(lambda: server.client.get("/v1/model").json()["digest"] == new_digest, seconds=30)
        swapped_at = len(clients.results)
        wait_for(lambda: len(clients.results) >= swapped_at + 20)

        # A damaged replacement (here: cut short) is refused and the fashion model stays.
        replace(served, fashion.read_bytes()[:-1000])
        wait_for(lambda: "refused the replaced bundle of model 'model'" in server.log(), seconds=30)
        damaged_at = len(clients.results)
        wait_for(lambda: len(clients.results) >= damaged_at + 20)
        assert server.client.get("/v1/model").json()["digest"] == new_digest
    finally:
        results = clients.stop()
        assert server.stop(), server.log()
    assert clients.errors == []
    assert {status for status, _ in results} == {200}
    labels = [tuple(labels) for _, labels in results]
    assert set(labels) == {tuple(before), tuple(after)}
    # The old model until the file is replaced, the new one once it has taken over (but for
    # the requests the old one still held then, one per client at most).
    assert set(labels[:replaced_at]) == {tuple(before)}
    assert set(labels[swapped_at + len(clients.threads) :]) == {tuple(after)}
    log = server.log()
    assert f"model 'model' swapped in from {served} (digest {new_digest})" in log
    assert "refused the replaced bundle of model 'model': cannot serve" in log
    assert f"still serving digest {new_digest}" in log
    assert "Traceback" not in log


def test_sigterm_answers_the_requests_in_flight(root, tmp_path, digits):
    """Each request sends half its body, then waits until SIGTERM has been sent before sending
    the rest: they are all in flight when the signal comes, and all answered."""
    server = Server(root / "models/fashion.cnnb", tmp_path, "--no-access-log")
    body = json.dumps({"inputs": digits.tolist()}).encode()
    half = len(body) // 2
    signalled, started, results = threading.Event(), [], []

    def chunks():
        yield body[:half]
        started.append(True)
        signalled.wait(30)
        yield body[half:]

    def send():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            try:
                response = client.post(
                    "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
                )
                results.append((response.status_code, [p["label"] for p in response.json()["predictions"]]))
            except httpx.HTTPError as exc:
                results.append(repr(exc))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(started) == len(threads), seconds=30)
    time.sleep(0.2)  # the first halves have reached the server
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the server has begun to shut down: it no longer accepts connections
    signalled.set()
    for thread in threads:
        thread.join()
    server.process.wait(timeout=60)
    expected = answers(root / "models/fashion.cnnb", digits)
    assert results == [(200, expected)] * len(threads)
    assert "Application shutdown complete" in server.log()
