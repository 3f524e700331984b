"""The drawing page with several models: it lists them, names what to draw from the picked
model's classes, and sends the drawing to that model (headless chromium, a real server)."""

import numpy as np
import pytest

import cnntool
from test_serve import Server, bars, browser, draw, wait_for  # noqa: F401 (browser: a fixture)

HEADING = "return document.getElementById('heading').textContent;"


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    server = Server(root / "models", tmp_path_factory.mktemp("log"), "--no-access-log")
    yield server
    assert server.stop(), server.log()


def test_the_page_picks_a_model_and_names_its_classes(server, browser, root):  # noqa: F811
    from selenium.webdriver.support.ui import Select

    fashion = cnntool.load_bundle(root / "models/fashion.cnnb").network.classes
    browser.get(server.url + "/")
    wait_for(browser, "return document.querySelectorAll('#bars .bar').length === 10;")
    assert browser.execute_script(HEADING) == "Draw one of: " + ", ".join(fashion)
    assert browser.title == "cnntool: fashion-small"
    picker = Select(browser.find_element("id", "choice"))
    assert [option.text for option in picker.options] == ["fashion", "mnist_seed"]
    assert [label for label, _ in bars(browser)] == fashion

    picker.select_by_visible_text("mnist_seed")
    wait_for(browser, "return document.getElementById('heading').textContent.includes('0, 1');")
    assert browser.execute_script(HEADING) == "Draw one of: " + ", ".join(str(i) for i in range(10))
    draw(browser, [[(0, -90), (0, 90)]])
    sent = browser.execute_script("return drawing.lastInput;")
    answer = server.client.post("/v1/models/mnist_seed/predict", json={"inputs": [sent]}).json()
    np.testing.assert_allclose(
        [p for _, p in bars(browser)], answer["predictions"][0]["probabilities"], rtol=1e-6
    )


def test_swagger_ui_renders_from_the_installed_assets(server, browser):  # noqa: F811
    """The machine running the tests has no internet: Swagger UI rendering the operations
    means its script and styles came from the server."""
    page = server.client.get("/docs").text
    assert "https://" not in page and "http://" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = server.client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 100_000
    browser.get(server.url + "/docs")
    count = wait_for(browser, "const n = document.querySelectorAll('.opblock').length; return n > 0 && n;")
    paths = server.client.get("/openapi.json").json()["paths"]
    assert count == sum(len(item) for item in paths.values())
