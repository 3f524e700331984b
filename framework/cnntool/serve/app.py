"""The HTTP API: a FastAPI app around the served models (one ModelService each).

    GET  /                     a page to draw with the mouse and watch the probabilities
    GET  /healthz              200 while the process is up
    GET  /readyz               200 once every model is loaded and compiled, 503 before (other
                               requests arriving before then wait for it, up to a minute)
    GET  /v1/models            every model: what it is and how it was trained
    GET  /v1/models/{name}     one of them
    POST /v1/models/{name}/predict   JSON inputs, one image, or a multipart upload of images
    GET  /v1/model, POST /v1/predict the same for the only model, when there is one
    /v2/...                    the Open Inference Protocol (see `oip`)
    GET  /metrics              Prometheus text format
    GET  /docs                 OpenAPI docs (/openapi.json), Swagger UI served from its package

Every error body is `{"error": "..."}`: 4xx for anything the client got wrong, 503 while
the model loads, 500 only for a bug in the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route, WebSocketRoute
from swagger_ui_bundle import swagger_ui_path

from cnntool import __version__
from cnntool.errors import InputError, LayerError
from cnntool.serve import inputs, oip
from cnntool.serve.metrics import ServerMetrics
from cnntool.serve.middleware import OPEN_PATHS, LimitBody, ObserveRequests, RequireKey
from cnntool.serve.models import ModelSet, UnknownModel
from cnntool.serve.schemas import (
    ErrorResponse,
    ListedModel,
    ModelInfo,
    ModelList,
    PredictResponse,
    Status,
    predict_request_schema,
)
from cnntool.serve.service import ModelService, ServeSettings

log = logging.getLogger("cnntool.serve")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NOT_READY = "the model is still loading; retry when /readyz answers 200"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Malformed input"),
        (401, "Missing or wrong API key (only with --api-key)"),
        (404, "Unknown model"),
        (413, "Body over the size cap"),
        (415, "Unsupported content type"),
        (422, "Invalid query parameter"),
        (503, "Model still loading"),
    )
}
BINARY = {"type": "string", "format": "binary"}
IMAGE_BODIES = {
    **{kind: {"schema": BINARY} for kind in inputs.IMAGE_TYPES},
    inputs.MULTIPART_TYPE: {
        "schema": {"type": "object", "properties": {"files": {"type": "array", "items": BINARY}}}
    },
}
SWAGGER_ASSETS = "/docs/assets"
ModelName = Annotated[str, Path(description="A model's name: its bundle's file name without .cnnb.")]
TopK = Annotated[int, Query(ge=1, le=1000, description="Classes listed in `top`.")]


def create_app(settings: ServeSettings, loaded: dict[str, Any] | None = None) -> FastAPI:
    """The app serving `settings.bundles` (some perhaps already loaded: `loaded`, by model name)."""
    show_log_lines()
    metrics = ServerMetrics()
    models = ModelSet(settings, metrics, loaded)
    single = len(models.names) == 1

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(models.start())
        yield
        await starting
        await models.stop()

    app = FastAPI(
        title="cnntool model server",
        version=__version__,
        description="Predictions from cnntool bundles: its /v1 routes and the Open Inference Protocol v2.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.models = models
    page = resources.files("cnntool.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", include_in_schema=False)
    async def drawing_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Status, summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, responses={503: ERRORS[503]}, summary="Readiness")
    async def readyz() -> Any:
        if not models.ready:
            return JSONResponse({"error": models.failure or NOT_READY}, status_code=503)
        return {"status": "ready"}

    @app.get("/v1/models", response_model=ModelList, responses=errors(401, 503), summary="The models")
    async def list_models() -> Any:
        listed = []
        for name in models.names:
            if not await models.wait_ready(name):
                return not_ready(models.get(name))
            listed.append({"model": name, **models.get(name).info()})
        return {"models": listed}

    @app.get(
        "/v1/models/{name}", response_model=ListedModel, responses=errors(401, 404, 503), summary="One model"
    )
    async def one_model(name: ModelName) -> Any:
        with models.use(name) as service:
            if not await service.wait_ready():
                return not_ready(service)
            return {"model": name, **service.info()}

    @app.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses=errors(400, 401, 404, 413, 415, 422, 503),
        openapi_extra={"requestBody": {"required": True, "content": IMAGE_BODIES}},
        summary="Classify inputs with one model",
    )
    async def predict_with(request: Request, name: ModelName, top_k: TopK = 3) -> Response:
        """Send `{"inputs": [...]}` as JSON, one image as the body (image/png, image/jpeg,
        ...), or several images as multipart/form-data file parts. Answers one prediction
        per input, in order."""
        with models.use(name) as service:
            return await predict(request, service, top_k)

    if single:

        @app.get("/v1/model", response_model=ModelInfo, responses=errors(401, 503), summary="The model")
        async def model_info() -> Any:
            with models.use(models.names[0]) as service:
                if not await service.wait_ready():
                    return not_ready(service)
                return service.info()

        @app.post(
            "/v1/predict",
            response_model=PredictResponse,
            responses=errors(400, 401, 413, 415, 422, 503),
            openapi_extra={"requestBody": {"required": True, "content": IMAGE_BODIES}},
            summary="Classify inputs",
        )
        async def predict_single(request: Request, top_k: TopK = 3) -> Response:
            """The same as /v1/models/{name}/predict for the one model served."""
            with models.use(models.names[0]) as service:
                return await predict(request, service, top_k)

    else:

        @app.api_route("/v1/model", methods=["GET", "POST"], include_in_schema=False)
        @app.api_route("/v1/predict", methods=["GET", "POST"], include_in_schema=False)
        async def which_model() -> JSONResponse:
            message = f"this server has several models ({', '.join(models.names)}); use /v1/models/NAME/..."
            return JSONResponse({"error": message}, status_code=404)

    add_v2_routes(app, models)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_TYPE)

    add_docs(app, models)
    install_error_handlers(app)
    routes = {route.path for route in app.routes if isinstance(route, Route | Mount | WebSocketRoute)}
    app.add_middleware(LimitBody, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(RequireKey, key=settings.api_key)
    app.add_middleware(ObserveRequests, metrics=metrics, routes=routes)
    return app


def show_log_lines() -> None:
    """Send the server's own log lines (models ready, swapped, refused) where uvicorn's go,
    in its format; once per process."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: ERRORS[status] for status in statuses}


def not_ready(service: ModelService) -> JSONResponse:
    return JSONResponse({"error": service.failure or NOT_READY}, status_code=503)


async def predict(request: Request, service: ModelService, top_k: int) -> Response:
    """One prediction per input of the body, by `service`'s model."""
    if not await service.wait_ready():
        return not_ready(service)
    kind = inputs.check_media_type(request.headers.get("content-type"))
    shape, preprocessing = service.bundle.network.input_shape, service.bundle.preprocessing
    if kind == inputs.MULTIPART_TYPE:
        images = await multipart_images(request)
        model_input = await run_in_threadpool(inputs.image_inputs, images, shape, preprocessing)
    elif kind == inputs.JSON_TYPE:
        body = await request.body()
        model_input = await run_in_threadpool(inputs.json_inputs, body, shape, preprocessing)
    else:
        body = await request.body()
        if not body:
            raise InputError("empty request body; send the image's bytes")
        images = [(body, "request body")]
        model_input = await run_in_threadpool(inputs.image_inputs, images, shape, preprocessing)
    predictions = await service.predict(model_input, top_k)
    return JSONResponse({"predictions": predictions})


def add_v2_routes(app: FastAPI, models: ModelSet) -> None:
    """The Open Inference Protocol v2 routes (see `cnntool.serve.oip`)."""
    tags: list[str | Enum] = ["Open Inference Protocol v2"]  # what FastAPI takes
    protocol_errors = errors(400, 401, 404, 503)

    @app.get("/v2", response_model=oip.ServerMetadata, responses=errors(401), tags=tags, summary="Server")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "cnntool", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", response_model=oip.Live, tags=tags, summary="Server liveness")
    async def server_live() -> dict[str, bool]:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        response_model=oip.Ready,
        responses={400: {"model": oip.Ready, "description": "Not ready"}},
        tags=tags,
        summary="Server readiness",
    )
    async def server_ready() -> Any:
        return JSONResponse({"ready": models.ready}, status_code=200 if models.ready else 400)

    @app.get(
        "/v2/models/{name}",
        response_model=oip.ModelMetadata,
        responses=protocol_errors,
        tags=tags,
        summary="Model metadata",
    )
    async def metadata(name: ModelName) -> Any:
        with models.use(name) as service:
            if not await service.wait_ready():
                return not_ready(service)
            network = service.bundle.network
            return oip.model_metadata(name, network.input_shape, network.classes)

    @app.get(
        "/v2/models/{name}/ready",
        response_model=oip.ModelReady,
        responses={
            400: {"model": oip.ModelReady, "description": "Not ready"},
            401: ERRORS[401],
            404: ERRORS[404],
        },
        tags=tags,
        summary="Model readiness",
    )
    async def model_ready(name: ModelName) -> Any:
        ready = models.get(name).ready
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)

    @app.post(
        "/v2/models/{name}/infer",
        response_model=oip.InferenceResponse,
        responses={
            200: {"content": {"application/octet-stream": {"schema": BINARY}}},
            **protocol_errors,
            413: ERRORS[413],
        },
        openapi_extra={"requestBody": {"required": True, "content": {}}},
        tags=tags,
        summary="Inference",
    )
    async def infer(request: Request, name: ModelName) -> Response:
        """Tensors in, tensors out: JSON, or with the binary tensor extension the JSON header
        (its length in `Inference-Header-Content-Length`) followed by the raw data."""
        with models.use(name) as service:
            if not await service.wait_ready():
                return not_ready(service)
            body = await request.body()
            header_length = request.headers.get(oip.HEADER_LENGTH)
            network = service.bundle.network
            shape, preprocessing = network.input_shape, service.bundle.preprocessing

            def decode() -> tuple[oip.InferenceRequest, Any]:
                parsed, binary = oip.parse_request(body, header_length)
                return parsed, oip.model_input(parsed, binary, shape, preprocessing)

            parsed, model_input = await run_in_threadpool(decode)
            oip.wanted_outputs(parsed)  # refuse what cannot be answered before running the network
            probabilities = await service.probabilities(model_input)
            content, json_length = oip.response_body(name, parsed, probabilities, network.classes)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )

    # The same routes with a version, as clients send them when asked for one; a bundle is
    # version "1" (left out of the schema: the unversioned routes document them).
    async def metadata_of_version(name: ModelName, version: str) -> Any:
        check_version(models, name, version)
        return await metadata(name)

    async def ready_of_version(name: ModelName, version: str) -> Any:
        check_version(models, name, version)
        return await model_ready(name)

    async def infer_with_version(request: Request, name: ModelName, version: str) -> Response:
        check_version(models, name, version)
        return await infer(request, name)

    versioned = "/v2/models/{name}/versions/{version}"
    app.add_api_route(versioned, metadata_of_version, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{versioned}/ready", ready_of_version, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{versioned}/infer", infer_with_version, methods=["POST"], include_in_schema=False)


def check_version(models: ModelSet, name: str, version: str) -> None:
    models.get(name)  # an unknown model is 404 first
    if version != "1":
        raise UnknownModel(f"model {name!r} has no version {version!r}; its one version is '1'")


def add_docs(app: FastAPI, models: ModelSet) -> None:
    """Swagger UI at /docs from the assets of the installed `swagger-ui-bundle-v2` (no CDN), and
    an OpenAPI schema whose request examples fit the served models."""

    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png",
        )

    app.openapi = openapi_for(app, models)  # type: ignore[method-assign]


def openapi_for(app: FastAPI, models: ModelSet) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI schema, completed once the models are loaded: the JSON bodies of the
    predict and infer routes then describe (and give as examples) inputs of the served shapes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        ready = [models.get(name) for name in models.names if models.get(name).ready]
        shapes = [tuple(service.bundle.network.input_shape) for service in ready] or [(1, 28, 28)]
        names = [service.name for service in ready]
        for path, item in schema["paths"].items():
            for operation in item.values():
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "name" and parameter["in"] == "path" and names:
                        parameter["schema"] = {"type": "string", "enum": names, "title": "Name"}
                        parameter["example"] = names[0]
            if path.endswith("predict"):
                json_body = {inputs.JSON_TYPE: {"schema": predict_request_schema(shapes)}}
                item["post"]["requestBody"]["content"] = {**json_body, **IMAGE_BODIES}
            if path.endswith("/infer"):
                item["post"]["requestBody"]["content"] = {
                    inputs.JSON_TYPE: {"schema": oip.infer_request_schema(shapes)}
                }
        if models.settings.api_key:  # every route but the open ones needs the bearer key
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, item in schema["paths"].items():
                for operation in item.values():
                    if path not in OPEN_PATHS:
                        operation["security"] = [{"bearer": []}]
        if len(ready) == len(models.names):  # complete: keep it
            app.openapi_schema = schema
        return schema

    return openapi


async def multipart_images(request: Request) -> list[tuple[bytes, str]]:
    """Every file part of a multipart body, in order, as (bytes, a name for errors)."""
    try:
        form = await request.form()
    except HTTPException as exc:
        raise InputError(f"malformed multipart body: {exc.detail}") from None
    try:
        images = []
        for field, value in form.multi_items():
            if isinstance(value, str):
                raise InputError(f"multipart field {field!r} is not a file; send each image as a file part")
            images.append((await value.read(), f"file {value.filename or field!r}"))
    finally:
        await form.close()
    if not images:
        raise InputError("the multipart body holds no files; send each image as a file part")
    return images


def install_error_handlers(app: FastAPI) -> None:
    """Every error as `{"error": "..."}`, with the status that fits it."""

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 400))

    @app.exception_handler(LayerError)
    async def layer_error(request: Request, exc: LayerError) -> JSONResponse:
        # A plugin's layer failed while running the model: the server is fine, the model is
        # not; the answer names the layer and its distribution.
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'request'}: {error['msg']}"
            + (f", received {error['input']!r}" if "input" in error else "")
            for error in exc.errors()
        ]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server log has the details"},
            status_code=500,
        )


def app_from_environment() -> FastAPI:
    """Factory for worker processes (`--workers N`): settings come from the environment."""
    return create_app(ServeSettings.from_environment())
