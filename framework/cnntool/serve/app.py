"""The HTTP API: a FastAPI app around one ModelService.

    GET  /            a page to draw a digit and watch the probabilities
    GET  /healthz     200 while the process is up
    GET  /readyz      200 once the model is loaded and compiled, 503 before (other
                      requests arriving before then wait for it, up to a minute)
    GET  /v1/model    what the model is and how it was trained
    POST /v1/predict  JSON inputs, one image, or a multipart upload of images
    GET  /metrics     Prometheus text format
    GET  /docs        OpenAPI docs (/openapi.json)

Every error body is `{"error": "..."}`: 4xx for anything the client got wrong, 503 while
the model loads, 500 only for a bug in the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from cnntool import __version__
from cnntool.errors import InputError
from cnntool.serve import inputs
from cnntool.serve.metrics import ServerMetrics
from cnntool.serve.middleware import LimitBody, ObserveRequests
from cnntool.serve.schemas import ErrorResponse, ModelInfo, PredictRequest, PredictResponse, Status
from cnntool.serve.service import ModelService, ServeSettings

log = logging.getLogger("cnntool.serve")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NOT_READY = "the model is still loading; retry when /readyz answers 200"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Malformed input"),
        (413, "Body over the size cap"),
        (415, "Unsupported content type"),
        (422, "Invalid query parameter"),
        (503, "Model still loading"),
    )
}
PREDICT_BODY = {
    "required": True,
    "content": {
        inputs.JSON_TYPE: {"schema": PredictRequest.model_json_schema()},
        **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in inputs.IMAGE_TYPES},
        inputs.MULTIPART_TYPE: {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
    },
}


def create_app(settings: ServeSettings, bundle: Any = None) -> FastAPI:
    """The app serving `settings.bundle` (or an already loaded `bundle`)."""
    metrics = ServerMetrics()
    service = ModelService(settings, metrics, bundle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(service.start())
        yield
        await starting
        await service.stop()

    app = FastAPI(
        title="cnntool model server",
        version=__version__,
        description="Predictions from one cnntool bundle.",
        lifespan=lifespan,
    )
    app.state.service = service
    page = resources.files("cnntool.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", include_in_schema=False)
    async def drawing_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Status, summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, responses={503: ERRORS[503]}, summary="Readiness")
    async def readyz() -> Any:
        if not service.ready:
            return JSONResponse({"error": service.failure or NOT_READY}, status_code=503)
        return {"status": "ready"}

    @app.get("/v1/model", response_model=ModelInfo, responses={503: ERRORS[503]}, summary="The model")
    async def model_info() -> Any:
        if not await service.wait_ready():
            return JSONResponse({"error": service.failure or NOT_READY}, status_code=503)
        return service.info()

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={status: ERRORS[status] for status in (400, 413, 415, 422, 503)},
        openapi_extra={"requestBody": PREDICT_BODY},
        summary="Classify inputs",
    )
    async def predict(
        request: Request,
        top_k: Annotated[int, Query(ge=1, le=1000, description="Classes listed in `top`.")] = 3,
    ) -> Response:
        """Send `{"inputs": [...]}` as JSON, one image as the body (image/png, image/jpeg,
        ...), or several images as multipart/form-data file parts. Answers one prediction
        per input, in order."""
        if not await service.wait_ready():
            return JSONResponse({"error": service.failure or NOT_READY}, status_code=503)
        kind = inputs.check_media_type(request.headers.get("content-type"))
        network = service.bundle.network
        shape, preprocessing = network.input_shape, service.bundle.preprocessing
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

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_TYPE)

    install_error_handlers(app)
    routes = {route.path for route in app.routes}
    app.add_middleware(LimitBody, limit=settings.max_body_bytes)
    app.add_middleware(ObserveRequests, metrics=metrics, routes=routes)
    return app


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
