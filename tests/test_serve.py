"""`cnntool serve` as a real server process on loopback, checked against `cnntool infer`.

A bundle is trained by the installed command, served by the installed command on a free
port, and every answer is compared with what `cnntool infer --json` prints for the same
input files. The drawing page is driven in headless chromium.
"""

import asyncio
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pytest
from PIL import Image

import cnntool

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
REQUIRE_SYSTEM = os.environ.get("CNNTOOL_REQUIRE_SYSTEM") == "1"
MAX_BODY = 256 * 1024
SAMPLES = 12


def run(*args):
    return subprocess.run([CNNTOOL, *map(str, args)], capture_output=True, text=True, timeout=300)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `cnntool serve` process on a free loopback port, its output in a log file."""

    def __init__(self, bundle, folder, *options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(folder) / f"serve-{self.port}.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [CNNTOOL, "serve", str(bundle), "--port", str(self.port), *map(str, options)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.wait_ready()

    def wait_ready(self):
        # A guard against hanging forever, not a timing assertion.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited early:\n{self.log()}"
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not ready after 180 s:\n{self.log()}")

    def log(self):
        return self.log_path.read_text()

    def stop(self):
        """SIGTERM; True if the server shut down gracefully. (A single process re-raises the
        signal after shutting down, so its exit status says SIGTERM; a supervisor of several
        workers exits with 0.)"""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        graceful = self.process.returncode in (0, -signal.SIGTERM)
        return graceful and "Application shutdown complete" in self.log()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("serve") / "seed.cnnb"
    result = run(
        "train", root / "models/seed_cnn.json", "--data", "mnist-sample", "--epochs", "1", "--seed", "0",
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def server(bundle_path, tmp_path_factory):
    server = Server(
        bundle_path, tmp_path_factory.mktemp("log"), "--max-body-bytes", MAX_BODY, "--no-access-log"
    )
    yield server
    assert server.stop(), server.log()


@pytest.fixture(scope="module")
def digits():
    """Test digits of the bundled sample, (N, 1, 28, 28) uint8."""
    return cnntool.load_dataset("mnist-sample").x_test[:SAMPLES]


def infer(bundle, paths):
    """`cnntool infer --json` records, without the file name: the reference answers."""
    result = run("infer", bundle, *paths, "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    for record in records:
        del record["input"]
    return records


def png(pixels, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def assert_same_predictions(received, expected):
    """Same classes in the same order; probabilities equal up to float32 rounding (a batch
    of several inputs may sum in another order than a batch of one)."""
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        assert (got["index"], got["label"]) == (want["index"], want["label"])
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
        assert got["probability"] == pytest.approx(want["probability"], rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def references(bundle_path, digits, tmp_path_factory):
    """Input files and `cnntool infer` answers for them: uint8 PNGs, float .npy arrays in [0, 1]
    and a JPEG of every digit."""
    folder = tmp_path_factory.mktemp("inputs")
    pngs, npys, jpegs = [], [], []
    for i, pixels in enumerate(digits):
        pngs.append(folder / f"digit{i}.png")
        pngs[-1].write_bytes(png(pixels[0]))
        npys.append(folder / f"digit{i}.npy")
        np.save(npys[-1], (pixels / 255).astype(np.float32))
        jpegs.append(folder / f"digit{i}.jpg")
        jpegs[-1].write_bytes(png(pixels[0], "JPEG"))
    return {
        "png": (pngs, infer(bundle_path, pngs)),
        "npy": (npys, infer(bundle_path, npys)),
        "jpeg": (jpegs, infer(bundle_path, jpegs)),
    }


# --- health, readiness, model --------------------------------------------------------------


def test_health_and_readiness(server):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    response = server.client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_model_endpoint_describes_the_bundle(server, bundle_path):
    bundle = cnntool.load_bundle(bundle_path)
    inspected = json.loads(run("inspect", bundle_path, "--json").stdout)
    info = server.client.get("/v1/model").json()
    assert info["name"] == "seed-cnn"
    assert info["input_shape"] == [1, 28, 28]
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["parameters"] == inspected["total_params"] == bundle.network.num_params
    assert info["digest"] == inspected["digest"] == bundle.digest
    assert info["cnntool_version"] == cnntool.__version__ == info["created_with"]
    assert info["providers"] == inspected["providers"]
    assert info["preprocessing"] == {
        "pixel_scale": 1 / 255,
        "mean": 0.0,
        "std": 1.0,
        "image_fit": "mnist",
        "background": "dark",
    }
    history = bundle.meta["history"]
    assert info["training"] == {
        "epochs": 1,
        "final_loss": history[-1]["loss"],
        "final_accuracy": history[-1]["accuracy"],
        "final_val_loss": history[-1]["val_loss"],
        "final_val_accuracy": history[-1]["val_accuracy"],
        "test": bundle.meta["test"],
        "dataset": "mnist-sample",
    }
    assert info["training"]["test"]["examples"] == 1000


# --- predictions equal `cnntool infer` ----------------------------------------------------


def test_json_pixels_match_infer(server, digits, references):
    _, expected = references["png"]
    response = server.client.post("/v1/predict", json={"inputs": digits[:, 0].tolist()})
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["predictions"], expected)


def test_json_floats_in_0_1_match_infer_on_float_arrays(server, digits, references):
    _, expected = references["npy"]
    floats = (digits / 255).astype(np.float32)  # (N, 1, 28, 28): the (C, H, W) form
    response = server.client.post("/v1/predict", json={"inputs": floats.tolist()})
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["predictions"], expected)


def test_each_input_is_scaled_on_its_own(server, digits, references):
    """Pixels, floats in [0, 1] and floats 0-255 mixed in one request each mean the same."""
    _, expected = references["png"]
    mixed = [digits[0, 0].tolist(), (digits[0, 0] / 255).tolist(), digits[0, 0].astype(float).tolist()]
    predictions = server.client.post("/v1/predict", json={"inputs": mixed}).json()["predictions"]
    assert_same_predictions(predictions, [expected[0]] * 3)


@pytest.mark.parametrize("kind,content_type", [("png", "image/png"), ("jpeg", "image/jpeg")])
def test_image_body_matches_infer(server, references, kind, content_type):
    paths, expected = references[kind]
    for path, record in zip(paths[:4], expected[:4], strict=True):
        response = server.client.post(
            "/v1/predict", content=path.read_bytes(), headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text
        assert_same_predictions(response.json()["predictions"], [record])


def test_large_photo_is_made_mnist_style_like_infer(server, bundle_path, root):
    photo = root / "models/digits/photo_7.png"
    response = server.client.post(
        "/v1/predict", content=photo.read_bytes(), headers={"content-type": "image/png"}
    )
    assert_same_predictions(response.json()["predictions"], infer(bundle_path, [photo]))


def test_multipart_upload_matches_infer_in_order(server, references):
    paths, expected = references["png"]
    order = [3, 0, 7, 5]
    files = [("files", (paths[i].name, paths[i].read_bytes(), "image/png")) for i in order]
    response = server.client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["predictions"], [expected[i] for i in order])


def test_top_k_lists_that_many_classes(server, digits):
    body = {"inputs": [digits[0, 0].tolist()]}
    prediction = server.client.post("/v1/predict?top_k=5", json=body).json()["predictions"][0]
    probabilities = np.array(prediction["probabilities"])
    assert [t["index"] for t in prediction["top"]] == list(np.argsort(-probabilities, kind="stable")[:5])
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    everything = server.client.post("/v1/predict?top_k=50", json=body).json()["predictions"][0]
    assert len(everything["top"]) == 10


# --- client mistakes: 4xx with a message, never 5xx ----------------------------------------

ROW = [0] * 28
IMAGE = [ROW] * 28
JSON = {"content-type": "application/json"}
NOT_A_LIST = '"inputs" must be a non-empty list of inputs, each of shape (1, 28, 28) or (28, 28)'
NOISE_PNG = png(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8))
NOT_AN_IMAGE = (
    "not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF, ...); "
    'send arrays as JSON {"inputs": [...]}'
)
ACCEPTED = (
    'send application/json ({"inputs": [...]}), an image (image/png, image/jpeg, image/gif, image/bmp, '
    "image/webp, image/tiff) or multipart/form-data image files"
)
MISTAKES = [
    ("bad json", JSON, b'{"inputs": [', 400, "malformed JSON: Expecting value at line 1 column 13"),
    ("not utf-8", JSON, b"\xff\xfe", 400, "malformed JSON: the body is not UTF-8 text"),
    ("json array", JSON, b"[1, 2]", 400, 'expected a JSON object {"inputs": [...]}, received a JSON array'),
    ("no inputs", JSON, b"{}", 400,
     'missing field "inputs": a list of inputs, each shaped like the model input'),
    ("extra field", JSON, json.dumps({"inputs": [IMAGE], "x": 1}).encode(), 400,
     "unknown field 'x'; the body holds only \"inputs\""),
    ("empty inputs", JSON, b'{"inputs": []}', 400,
     f"{NOT_A_LIST}; received an empty list"),
    ("inputs not a list", JSON, b'{"inputs": 7}', 400,
     f"{NOT_A_LIST}; received a JSON number"),
    ("wrong shape", JSON, json.dumps({"inputs": [IMAGE, [ROW] * 27]}).encode(), 400,
     "inputs[1]: has shape (27, 28); expected (1, 28, 28) or (28, 28)"),
    ("three channels", JSON, json.dumps({"inputs": [[IMAGE] * 3]}).encode(), 400,
     "inputs[0]: has shape (3, 28, 28); expected (1, 28, 28) or (28, 28)"),
    ("ragged", JSON, json.dumps({"inputs": [[ROW] * 27 + [[0] * 27]]}).encode(), 400,
     "inputs[0]: not a rectangular array of numbers; expected shape (1, 28, 28) or (28, 28)"),
    ("strings", JSON, json.dumps({"inputs": [[["a"] * 28] * 28]}).encode(), 400,
     "inputs[0]: must be nested lists of numbers of shape (1, 28, 28) or (28, 28)"),
    ("nan", JSON, json.dumps({"inputs": [[[float("nan")] * 28] * 28]}).encode(), 400,
     "inputs[0]: contains NaN or infinite values"),
    ("infinity", JSON, json.dumps({"inputs": [[[1.0] * 27 + [float("inf")]] * 28]}).encode(), 400,
     "inputs[0]: contains NaN or infinite values"),
    ("above 255", JSON, json.dumps({"inputs": [[[300] + [0] * 27] * 28]}).encode(), 400,
     "inputs[0]: values must be pixels 0-255 or floats in [0, 1]; found values from 0 to 300"),
    ("negative", JSON, json.dumps({"inputs": [[[-0.5] + [0.5] * 27] * 28]}).encode(), 400,
     "inputs[0]: values must be pixels 0-255 or floats in [0, 1]; found values from -0.5 to 0.5"),
    ("not an image", {"content-type": "image/png"}, b"hello", 400,
     f"request body: {NOT_AN_IMAGE}"),
    ("truncated png", {"content-type": "image/png"}, NOISE_PNG[:300], 400,
     "request body: corrupt or truncated image (image file is truncated)"),
    ("empty image", {"content-type": "image/jpeg"}, b"", 400, "empty request body; send the image's bytes"),
    ("text", {"content-type": "text/plain"}, b"7", 415, f"unsupported content type 'text/plain'; {ACCEPTED}"),
    ("no content type", {}, b"7", 415, f"unsupported content type none; {ACCEPTED}"),
    ("no boundary", {"content-type": "multipart/form-data"}, b"x", 400,
     "malformed multipart body: Missing boundary in multipart."),
]  # fmt: skip


@pytest.mark.parametrize(
    "headers,body,status,message", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_client_mistakes_get_4xx_with_a_message(server, headers, body, status, message):
    response = server.client.post("/v1/predict", content=body, headers=headers)
    assert (response.status_code, response.json()) == (status, {"error": message})


def test_multipart_mistakes(server):
    response = server.client.post("/v1/predict", data={"note": "seven"}, files={"x": ("a.png", b"no image")})
    assert response.status_code == 400
    assert response.json() == {
        "error": "multipart field 'note' is not a file; send each image as a file part"
    }
    response = server.client.post("/v1/predict", files=[("files", ("a.png", b"no image", "image/png"))])
    assert response.json() == {"error": f"file 'a.png': {NOT_AN_IMAGE}"}


def test_oversized_bodies_are_refused_by_length_and_while_streaming(server):
    too_large = f"request body exceeds the limit of {MAX_BODY} bytes (set by --max-body-bytes)"
    big = b"[" + b"0," * MAX_BODY + b"0]"
    response = server.client.post("/v1/predict", content=big, headers=JSON)
    assert (response.status_code, response.json()) == (413, {"error": too_large})

    def chunks():  # no Content-Length: the cap applies while the body streams in
        for _ in range(64):
            yield b" " * 65536

    response = server.client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
    assert "content-length" not in response.request.headers
    assert (response.status_code, response.json()) == (413, {"error": too_large})


def test_framework_errors_have_the_same_shape(server):
    response = server.client.post("/v1/predict?top_k=0", json={"inputs": [IMAGE]})
    assert (response.status_code, response.json()) == (
        422,
        {"error": "top_k: Input should be greater than or equal to 1, received '0'"},
    )
    response = server.client.get("/v1/predict")
    assert (response.status_code, response.json()) == (405, {"error": "Method Not Allowed"})
    response = server.client.get("/v2/nothing")
    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})


# --- 50 concurrent clients, valid and malformed ---------------------------------------------


def metric_samples(text):
    """{(name, frozenset of label pairs): value} from Prometheus text."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def predict_count(samples, status):
    key = (
        "cnntool_requests_total",
        frozenset({("route", "/v1/predict"), ("method", "POST"), ("status", status)}),
    )
    return samples.get(key, 0)


def test_fifty_concurrent_clients_mixing_valid_and_malformed_requests(server, digits, references):
    png_paths, expected = references["png"]
    _, expected_floats = references["npy"]
    valid = []
    for i in range(SAMPLES):
        valid.append(("json", {"inputs": [digits[i, 0].tolist()]}, [expected[i]]))
        pair = [i, (i + 5) % SAMPLES]
        floats = {"inputs": [(digits[j] / 255).astype(np.float32).tolist() for j in pair]}
        valid.append(("json", floats, [expected_floats[j] for j in pair]))
        valid.append(("png", png_paths[i].read_bytes(), [expected[i]]))
        valid.append(("multipart", [png_paths[j] for j in pair], [expected[j] for j in pair]))
    malformed = [(headers, body, status) for _, headers, body, status, _ in MISTAKES]
    clients, per_client = 50, 16
    before = metric_samples(server.client.get("/metrics").text)

    async def client(number, session):
        outcomes = []
        for k in range(per_client):
            if (number + k) % 4 == 3:  # a quarter malformed
                headers, body, status = malformed[(number * per_client + k) % len(malformed)]
                async with session.post("/v1/predict", data=body, headers=headers) as response:
                    outcomes.append(("malformed", status, response.status, await response.json(), None))
                continue
            kind, payload, want = valid[(number * per_client + k) % len(valid)]
            if kind == "json":
                request = session.post("/v1/predict", json=payload)
            elif kind == "png":
                request = session.post("/v1/predict", data=payload, headers={"content-type": "image/png"})
            else:
                form = aiohttp.FormData()
                for path in payload:
                    form.add_field("files", path.read_bytes(), filename=path.name, content_type="image/png")
                request = session.post("/v1/predict", data=form)
            async with request as response:
                outcomes.append(("valid", 200, response.status, await response.json(), want))
        return outcomes

    async def load():
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(server.url, connector=connector) as session:
            results = await asyncio.gather(*(client(n, session) for n in range(clients)))
        return [outcome for outcomes in results for outcome in outcomes]

    outcomes = asyncio.run(load())
    assert len(outcomes) == clients * per_client
    for kind, want_status, status, body, want in outcomes:
        assert status == want_status, (kind, status, body)
        if kind == "valid":
            assert_same_predictions(body["predictions"], want)
        else:
            assert 400 <= status < 500 and isinstance(body["error"], str) and body["error"]

    # Still alive and ready, and /metrics counted exactly this traffic.
    assert server.process.poll() is None
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/readyz").status_code == 200
    after = metric_samples(server.client.get("/metrics").text)
    sent_valid = [o for o in outcomes if o[0] == "valid"]
    assert predict_count(after, "200") - predict_count(before, "200") == len(sent_valid)
    for status in ("400", "413", "415"):
        sent = sum(1 for o in outcomes if o[0] == "malformed" and str(o[2]) == status)
        assert predict_count(after, status) - predict_count(before, status) == sent
    # No 5xx during the load (a /readyz 503 while the server started is expected).
    server_errors = [
        key for key in after if key[0] == "cnntool_requests_total" and dict(key[1])["status"].startswith("5")
    ]
    assert [after[key] - before.get(key, 0) for key in server_errors] == [0] * len(server_errors)
    assert not [key for key in server_errors if dict(key[1])["route"] == "/v1/predict"]
    inputs = sum(len(o[4]) for o in sent_valid)
    batch_sum = ("cnntool_batch_size_sum", frozenset())
    batch_count = ("cnntool_batch_size_count", frozenset())
    assert after[batch_sum] - before[batch_sum] == inputs
    assert (
        after[("cnntool_predictions_total", frozenset())] - before[("cnntool_predictions_total", frozenset())]
        == inputs
    )
    assert 1 <= after[batch_count] - before[batch_count] <= len(sent_valid)


def test_metrics_describe_the_model_and_parse(server, bundle_path):
    response = server.client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = metric_samples(response.text)
    bundle = cnntool.load_bundle(bundle_path)
    info = {
        ("name", "seed-cnn"),
        ("digest", bundle.digest),
        ("cnntool_version", cnntool.__version__),
        ("parameters", str(bundle.network.num_params)),
        ("input_shape", "1x28x28"),
    }
    assert samples[("cnntool_model_info", frozenset(info))] == 1
    assert samples[("cnntool_model_ready", frozenset())] == 1
    # Histogram buckets are cumulative and end with +Inf = count.
    buckets = sorted(
        (math.inf if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), v)
        for k, v in samples.items()
        if k[0] == "cnntool_batch_size_bucket"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == samples[("cnntool_batch_size_count", frozenset())]


# --- docs and the page ----------------------------------------------------------------------


def test_openapi_documents_the_endpoints(server):
    schema = server.client.get("/openapi.json").json()
    assert {"/healthz", "/readyz", "/v1/model", "/v1/predict", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/png", "image/jpeg", "multipart/form-data"} <= set(body)
    assert body["application/json"]["schema"]["required"] == ["inputs"]
    assert "swagger-ui" in server.client.get("/docs").text


def test_drawing_page_is_self_contained(server):
    page = server.client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)


def chromium():
    paths = [shutil.which(name) or f"/usr/bin/{name}" for name in ("chromium", "chromedriver")]
    missing = [path for path in paths if not os.access(path, os.X_OK)]
    if missing:
        reason = f"{' and '.join(missing)} missing; install Debian's chromium and chromium-driver"
        if REQUIRE_SYSTEM:
            pytest.fail(f"CNNTOOL_REQUIRE_SYSTEM=1 but {reason}")
        pytest.skip(reason)
    return paths


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    browser_path, driver_path = chromium()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1000,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def wait_for(driver, script, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: d.execute_script(script))


def draw(driver, strokes):
    """Press, move through the points (offsets from the pad's centre) and release, per stroke."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    for points in strokes:
        actions = ActionChains(driver, duration=20)
        actions.move_to_element_with_offset(pad, *points[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            path = [(round(x0 + (x1 - x0) * step / 5), round(y0 + (y1 - y0) * step / 5)) for step in range(6)]
            for (ax, ay), (bx, by) in itertools.pairwise(path):
                actions.move_by_offset(bx - ax, by - ay)
        actions.release().perform()
    # Settled: the last answer is for the drawing as it is now, and nothing is in flight.
    wait_for(
        driver,
        "return !inFlight && drawing.lastInput !== null"
        " && JSON.stringify(drawing.lastInput) === JSON.stringify(modelInput());",
    )


def bars(driver):
    from selenium.webdriver.common.by import By

    return [
        (bar.get_attribute("data-label"), float(bar.get_attribute("data-probability")))
        for bar in driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
    ]


@pytest.mark.parametrize(
    "digit,strokes",
    [
        ("1", [[(0, -90), (0, 90)]]),
        ("7", [[(-70, -85), (70, -85), (-10, 95)]]),
    ],
)
def test_drawing_a_digit_in_the_browser_shows_the_servers_probabilities(server, browser, digit, strokes):
    browser.get(server.url + "/")
    wait_for(browser, "return document.querySelectorAll('#bars .bar').length === 10;")
    assert [p for _, p in bars(browser)] == [0.0] * 10
    draw(browser, strokes)

    shown = bars(browser)
    assert [label for label, _ in shown] == [str(i) for i in range(10)]
    assert sum(p for _, p in shown) == pytest.approx(1.0, abs=1e-5)
    best = max(shown, key=lambda bar: bar[1])[0]
    assert browser.execute_script("return document.getElementById('prediction').textContent;") == best
    assert best == digit

    # The page sent an MNIST-style 28x28 digit of integer pixels, centred by mass ...
    sent = np.array(browser.execute_script("return drawing.lastInput;"))
    assert sent.shape == (28, 28) and sent.dtype.kind == "i" and sent.min() >= 0 and sent.max() <= 255
    rows, cols = np.nonzero(sent)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20
    mass = sent / sent.sum()
    assert abs((mass.sum(axis=1) @ np.arange(28)) - 13.5) <= 1
    assert abs((mass.sum(axis=0) @ np.arange(28)) - 13.5) <= 1
    # ... and shows exactly what the server answers for it.
    answer = server.client.post("/v1/predict", json={"inputs": [sent.tolist()]}).json()["predictions"][0]
    np.testing.assert_allclose([p for _, p in shown], answer["probabilities"], rtol=1e-6)

    browser.find_element("id", "clear").click()
    assert [p for _, p in bars(browser)] == [0.0] * 10


def test_page_says_drawing_is_unavailable_for_colour_models(browser, tmp_path):
    spec = {
        "name": "colour", "input_shape": [3, 8, 8], "classes": ["a", "b"],
        "layers": [
            {"type": "conv2d", "filters": 2, "kernel_size": 3},
            {"type": "flatten"},
            {"type": "dense", "units": 2},
        ],
    }  # fmt: skip
    path = cnntool.save_bundle(cnntool.Network.from_spec(spec, seed=0), tmp_path / "colour.cnnb")
    server = Server(path, tmp_path, "--no-access-log")
    try:
        browser.get(server.url + "/")
        text = wait_for(
            browser,
            "const t = document.getElementById('model').textContent; return t.includes('Drawing') && t;",
        )
        assert "Drawing is not available: this model takes 3 channels" in text
        assert not browser.find_element("id", "pad").is_displayed()
    finally:
        assert server.stop(), server.log()


# --- the command ------------------------------------------------------------------------------


def test_several_workers_serve_the_same_answers(bundle_path, tmp_path, digits, references):
    _, expected = references["png"]
    server = Server(bundle_path, tmp_path, "--workers", "2", "--threads", "1", "--no-access-log")
    try:
        for _ in range(4):  # connections may land on either worker
            with httpx.Client(base_url=server.url) as client:
                response = client.post("/v1/predict", json={"inputs": digits[:, 0].tolist()})
                assert_same_predictions(response.json()["predictions"], expected)
                assert client.get("/v1/model").json()["digest"] == cnntool.load_bundle(bundle_path).digest
    finally:
        assert server.stop(), server.log()
    assert "with 2 worker(s), 1 thread(s) each" in server.log()


def test_serve_reports_a_missing_or_damaged_bundle(tmp_path):
    result = run("serve", tmp_path / "nope.cnnb")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "nope.cnnb" in result.stderr
    assert result.stderr.count("\n") == 1
    damaged = tmp_path / "damaged.cnnb"
    damaged.write_bytes(b"\x81\xa6format\xaenot a bundle")
    result = run("serve", damaged)
    assert result.returncode == 1 and result.stderr.startswith(f"error: {damaged}")


def test_serve_reports_a_busy_port(bundle_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", bundle_path, "--port", port)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; pick another --port or --host\n"
    )


def test_help_does_not_import_the_web_stack():
    code = "import sys; from cnntool.cli import app; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert "--max-batch" in run("serve", "--help").stdout
