"""The OpenAPI schema of `cnntool serve` tells the truth: schemathesis against a real server.

Every operation gets a few generated requests (valid ones, and invalid ones that the schema
forbids), and every built-in check runs on the answers: no 5xx, every status, header and body
as the schema documents, valid requests accepted and invalid ones refused. Two checks are
skipped where a JSON schema cannot say what the server takes: that random bytes labelled
image/png are a valid image (they are a 400), and that an inference request whose `data`
length does not follow from its `shape` is invalid (the schema fixes one row; the server
takes any number). The schema's own examples are sent as they are and must be answered 200.
"""

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from test_serve import Server

EXAMPLES = 6


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    server = Server(root / "models/mnist_seed.cnnb", tmp_path_factory.mktemp("log"), "--no-access-log")
    yield server
    assert server.stop(), server.log()


def checks_to_skip(case):
    skipped = []
    if case.media_type not in (None, "application/json"):
        skipped.append(positive_data_acceptance)
    if case.path.endswith("/infer"):
        skipped.append(negative_data_rejection)
    return skipped


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_matches_the_schema(server, mode):
    """(schemathesis's own pytest plugin does not run under pytest 9 yet, so the cases are
    drawn through hypothesis directly, operation by operation.)"""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 14
    for operation in operations:
        definition = operation.definition.raw
        if mode == GenerationMode.NEGATIVE and not (
            "parameters" in definition or "requestBody" in definition
        ):
            continue  # no request to it is invalid

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )
        def answers_match(case):
            case.call_and_validate(excluded_checks=checks_to_skip(case))

        answers_match()


def test_the_examples_are_accepted(server):
    document = server.client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/models/{name}/predict", "/v2/models/{name}/infer"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        url = path.replace("{name}", "mnist_seed")
        response = server.client.post(url, json=body["example"])
        assert response.status_code == 200, (path, response.text)
