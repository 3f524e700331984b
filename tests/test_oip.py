"""The Open Inference Protocol v2 of `cnntool serve`, spoken by the reference client.

The shipped bundles `models/mnist_seed.cnnb` and `models/fashion.cnnb` are served by the
installed command (`cnntool serve models/`) on a free loopback port, and Triton's own
`tritonclient.http` talks to it: health, readiness, metadata, JSON and binary tensors in UINT8
and FP32, each answer compared with what `cnntool infer --json` prints for the same arrays.
"""

import json
import os
import socket
import subprocess

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import cnntool
from test_serve import CNNTOOL, Server, run

MODELS = ("fashion", "mnist_seed")  # as `serve models/` finds them, sorted
UNKNOWN = "unknown model 'nope'; this server has fashion, mnist_seed"
SAMPLES = 6
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def bundles(root):
    return {name: root / "models" / f"{name}.cnnb" for name in MODELS}


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    server = Server(root / "models", tmp_path_factory.mktemp("log"), "--no-access-log")
    yield server
    assert server.stop(), server.log()


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def digits():
    return cnntool.load_dataset("mnist-sample").x_test[:SAMPLES]


@pytest.fixture(scope="module")
def expected(bundles, digits, tmp_path_factory):
    """`cnntool infer --json` on the digits as a uint8 array and as floats in [0, 1], per model."""
    folder = tmp_path_factory.mktemp("arrays")
    arrays = {"UINT8": digits, "FP32": (digits / 255).astype(np.float32)}
    paths = []
    for datatype, array in arrays.items():
        paths.append(folder / f"{datatype}.npy")
        np.save(paths[-1], array)
    answers = {}
    for name, bundle in bundles.items():
        result = run("infer", bundle, *paths, "--json")
        assert result.returncode == 0, result.stderr
        records = json.loads(result.stdout)
        for index, datatype in enumerate(arrays):
            answers[name, datatype] = records[index * SAMPLES : (index + 1) * SAMPLES]
            assert {r["input"] for r in answers[name, datatype]} == {str(paths[index])}
    return arrays, answers


def infer(client, model, array, datatype, binary, outputs=("probabilities", "index", "label"), **options):
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    return client.infer(model, [tensor], outputs=wanted, **options)


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata() == {
        "name": "cnntool",
        "version": cnntool.__version__,
        "extensions": ["binary_tensor_data"],
    }


def test_models_ready_and_an_unknown_one_not(client):
    assert client.is_model_ready("mnist_seed")
    assert client.is_model_ready("fashion")
    assert not client.is_model_ready("nope")


def test_model_metadata_declares_the_tensors(client, bundles):
    for name, path in bundles.items():
        classes = cnntool.load_bundle(path).network.classes
        assert client.get_model_metadata(name) == {
            "name": name,
            "versions": ["1"],
            "platform": "cnntool",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
                {"name": "index", "datatype": "INT64", "shape": [-1]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
        }
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("nope")
    assert error.value.status() == "404"
    assert error.value.message() == UNKNOWN


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("model", MODELS)
def test_answers_equal_cnntool_infer(client, expected, model, datatype, binary):
    arrays, answers = expected
    result = infer(client, model, arrays[datatype], datatype, binary)
    reference = answers[model, datatype]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (SAMPLES, 10)
    np.testing.assert_allclose(probabilities, [r["probabilities"] for r in reference], rtol=1e-5, atol=1e-6)
    assert result.as_numpy("index").tolist() == [r["index"] for r in reference]
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert labels == [r["label"] for r in reference]
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (model, "1")
    sizes = [output.get("parameters", {}).get("binary_data_size") for output in response["outputs"]]
    assert all(sizes) if binary else not any(sizes)


def test_requested_outputs_only_and_the_id_echoed(client, expected):
    arrays, answers = expected
    result = infer(client, "fashion", arrays["UINT8"][:2], "UINT8", True, outputs=["label"], request_id="r-7")
    response = result.get_response()
    assert response["id"] == "r-7"
    assert [output["name"] for output in response["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    assert [label.decode() for label in result.as_numpy("label")] == [
        r["label"] for r in answers["fashion", "UINT8"][:2]
    ]


def test_default_outputs_come_back_binary(client, expected):
    """Without `outputs`, tritonclient asks for every output in binary (binary_data_output)."""
    arrays, answers = expected
    tensor = triton.InferInput("input", [SAMPLES, 1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(arrays["UINT8"])
    result = client.infer("mnist_seed", [tensor])
    assert [output["name"] for output in result.get_response()["outputs"]] == [
        "probabilities",
        "index",
        "label",
    ]
    assert result.as_numpy("index").tolist() == [r["index"] for r in answers["mnist_seed", "UINT8"]]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_wrong_shape_is_a_protocol_error(client, binary):
    with pytest.raises(InferenceServerException) as error:
        infer(client, "mnist_seed", np.zeros((1, 1, 27, 28), np.uint8), "UINT8", binary)
    assert error.value.status() == "400"
    assert (
        error.value.message()
        == "input 'input' has shape [1, 1, 27, 28]; expected [-1, 1, 28, 28] or [-1, 28, 28]"
    )


def test_version_1_is_the_model_and_others_unknown(client, expected):
    arrays, answers = expected
    assert client.is_model_ready("fashion", "1")
    assert not client.is_model_ready("fashion", "2")
    assert client.get_model_metadata("fashion", "1")["name"] == "fashion"
    result = infer(client, "fashion", arrays["UINT8"], "UINT8", True, model_version="1")
    assert result.as_numpy("index").tolist() == [r["index"] for r in answers["fashion", "UINT8"]]
    with pytest.raises(InferenceServerException) as error:
        infer(client, "fashion", arrays["UINT8"], "UINT8", True, model_version="2")
    assert error.value.status() == "404"
    assert error.value.message() == "model 'fashion' has no version '2'; its one version is '1'"


def test_inference_on_an_unknown_model_is_404(client):
    with pytest.raises(InferenceServerException) as error:
        infer(client, "nope", np.zeros((1, 1, 28, 28), np.uint8), "UINT8", True)
    assert error.value.status() == "404"
    assert error.value.message() == UNKNOWN


# --- the protocol over plain HTTP: nested data, errors ------------------------------------------


def post_infer(server, model, document, **options):
    return server.client.post(f"/v2/models/{model}/infer", json=document, **options)


def test_nested_and_flat_json_data_mean_the_same(server, expected):
    arrays, answers = expected
    pixels = arrays["UINT8"][:3]
    for data in (pixels.tolist(), pixels.reshape(-1).tolist(), pixels[:, 0].tolist()):
        shape = [3, 28, 28] if np.array(data).ndim == 3 else [3, 1, 28, 28]
        document = {"inputs": [{"name": "input", "shape": shape, "datatype": "UINT8", "data": data}]}
        response = post_infer(server, "mnist_seed", document)
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output for output in response.json()["outputs"]}
        assert outputs["index"]["data"] == [r["index"] for r in answers["mnist_seed", "UINT8"][:3]]
        assert outputs["label"] == {
            "name": "label",
            "datatype": "BYTES",
            "shape": [3],
            "data": [r["label"] for r in answers["mnist_seed", "UINT8"][:3]],
        }


def tensor(**changes):
    return {"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784, **changes}


@pytest.mark.parametrize(
    "document,message",
    [
        ({}, "malformed inference request: inputs: Field required"),
        ({"inputs": [tensor(name="image")]}, "unknown input 'image'; the model's input is 'input'"),
        (
            {"inputs": [tensor(datatype="BYTES")]},
            "input 'input': datatype 'BYTES' is not supported; send UINT8 pixels or FP32 values",
        ),
        (
            {"inputs": [tensor(data=[0] * 783)]},
            "input 'input': shape [1, 1, 28, 28] holds 784 values; data has 783",
        ),
        (
            {"inputs": [tensor(data=[0.5] * 784)]},
            "input 'input': datatype UINT8 takes integers; found fractional numbers",
        ),
        (
            {"inputs": [tensor(data=[300] * 784)]},
            "input 'input' row 0: values must be pixels 0-255 or floats in [0, 1]; found values from 300",
        ),
        (
            {"inputs": [tensor()], "outputs": [{"name": "logits"}]},
            "malformed inference request: outputs.0.name",
        ),
        ({"inputs": [tensor(data=None)]}, "input 'input': has neither data nor binary_data_size"),
    ],
)
def test_client_mistakes_are_400_with_an_error(server, document, message):
    response = post_infer(server, "mnist_seed", document)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert response.json()["error"].startswith(message)


def test_malformed_binary_header_is_400(server):
    header = json.dumps({"inputs": [{**tensor(data=None), "parameters": {"binary_data_size": 784}}]}).encode()
    for length, body, message in (
        ("abc", header, "Inference-Header-Content-Length is 'abc'"),
        (
            str(len(header)),
            header + b"\0" * 10,
            "input 'input': shape [1, 1, 28, 28] of UINT8 needs 784 bytes",
        ),
    ):
        response = server.client.post(
            "/v2/models/mnist_seed/infer", content=body, headers={"Inference-Header-Content-Length": length}
        )
        assert response.status_code == 400 and response.json()["error"].startswith(message), response.text


# --- several models on /v1 ---------------------------------------------------------------------


def test_v1_lists_and_addresses_each_model(server, bundles, expected):
    arrays, answers = expected
    listed = server.client.get("/v1/models").json()["models"]
    assert [(m["model"], m["digest"]) for m in listed] == [
        (name, cnntool.load_bundle(path).digest) for name, path in bundles.items()
    ]
    for name in MODELS:
        response = server.client.post(f"/v1/models/{name}/predict", json={"inputs": arrays["UINT8"].tolist()})
        assert [p["index"] for p in response.json()["predictions"]] == [
            r["index"] for r in answers[name, "UINT8"]
        ]
    response = server.client.post("/v1/predict", json={"inputs": arrays["UINT8"].tolist()})
    assert (response.status_code, response.json()) == (
        404,
        {"error": "this server has several models (fashion, mnist_seed); use /v1/models/NAME/..."},
    )
    response = server.client.post("/v1/models/nope/predict", json={"inputs": arrays["UINT8"].tolist()})
    assert response.status_code == 404
    metrics = server.client.get("/metrics").text
    # Counted by route template, not by the path of each model.
    assert 'cnntool_requests_total{route="/v1/models/{name}/predict",method="POST",status="200"}' in metrics
    assert 'cnntool_requests_total{route="/v1/models/{name}/predict",method="POST",status="404"}' in metrics
    assert "/v1/models/fashion/predict" not in metrics


# --- keys --------------------------------------------------------------------------------------


def test_an_api_key_guards_everything_but_health_and_metrics(bundles, tmp_path, expected):
    arrays, answers = expected
    # Two bundles named one by one: listed in that order.
    server = Server(bundles["mnist_seed"], tmp_path, bundles["fashion"], "--api-key", KEY, "--no-access-log")
    address = server.url.removeprefix("http://")
    try:
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
            assert server.client.get(path).status_code == 200, path
        body = {"inputs": arrays["UINT8"].tolist()}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            for method, path in (
                ("POST", "/v1/models/mnist_seed/predict"),
                ("GET", "/v1/models"),
                ("GET", "/v2/models/mnist_seed"),
                ("GET", "/docs"),
            ):
                response = server.client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json() == {
                    "error": "missing or wrong API key; send the header Authorization: Bearer KEY"
                }
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": f"Bearer {KEY}"}
        schema = server.client.get("/openapi.json", headers=good).json()
        assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
        assert schema["paths"]["/v2/models/{name}/infer"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/v2/health/ready"]["get"]
        listed = server.client.get("/v1/models", headers=good).json()["models"]
        assert [m["model"] for m in listed] == ["mnist_seed", "fashion"]
        response = server.client.post("/v1/models/mnist_seed/predict", json=body, headers=good)
        assert response.status_code == 200
        assert [p["index"] for p in response.json()["predictions"]] == [
            r["index"] for r in answers["mnist_seed", "UINT8"]
        ]
        with triton.InferenceServerClient(address) as client:
            assert client.is_server_live() and client.is_server_ready()
            with pytest.raises(InferenceServerException) as error:
                infer(client, "mnist_seed", arrays["UINT8"], "UINT8", True)
            assert error.value.status() == "401"
            result = infer(client, "mnist_seed", arrays["UINT8"], "UINT8", True, headers=good)
            assert result.as_numpy("index").tolist() == [r["index"] for r in answers["mnist_seed", "UINT8"]]
    finally:
        assert server.stop(), server.log()
    assert KEY not in server.log()


def test_a_non_loopback_host_needs_a_key(bundles):
    result = run("serve", bundles["mnist_seed"], "--host", "0.0.0.0")
    assert result.returncode == 1
    assert result.stderr.startswith("error: refusing to serve on 0.0.0.0 without a key")
    # With the key from the environment, or the check waived, the next check (the port) speaks.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra, env in ((["--allow-unauthenticated"], {}), ([], {"CNNTOOL_API_KEY": KEY})):
            command = [
                CNNTOOL,
                "serve",
                bundles["mnist_seed"],
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
                *extra,
            ]
            result = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, **env}, timeout=120
            )
            assert result.returncode == 1
            assert result.stderr.startswith(f"error: cannot listen on 0.0.0.0:{port}"), result.stderr


def test_serve_refuses_an_empty_folder_and_two_models_of_one_name(bundles, tmp_path):
    result = run("serve", tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: {tmp_path}: is a folder without .cnnb bundles; name a bundle or a folder of them\n"
    )
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "fashion.cnnb"
    twin.write_bytes(bundles["fashion"].read_bytes())
    result = run("serve", bundles["fashion"], twin)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: two bundles would both be model 'fashion': {bundles['fashion']} and {twin}; "
        "rename one of them\n"
    )
