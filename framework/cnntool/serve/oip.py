"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP API) over the served models.

    GET  /v2                         server name, version and extensions
    GET  /v2/health/live             200 while the process is up
    GET  /v2/health/ready            200 once every model is ready, 400 before
    GET  /v2/models/{name}           the model's metadata: its input and output tensors
    GET  /v2/models/{name}/ready     200 once that model is ready, 400 before, 404 if unknown
    POST /v2/models/{name}/infer     tensors in, tensors out, as JSON or binary

A model takes one input, `input`, of shape [N, C, H, W] (or [N, H, W] for one channel):
`UINT8` (or another integer type) is raw pixels 0-255, `FP32` (or `FP64`, `FP16`) is floats
in [0, 1] or 0-255, each preprocessed as the bundle records, exactly as `/v1/predict` and
`cnntool infer` do. It answers `probabilities` (FP32 [N, classes]), `index` (INT64 [N], the
most likely class) and `label` (BYTES [N], its name).

The binary tensor extension: with an `Inference-Header-Content-Length: L` header the first L
bytes of the body are the JSON request and the rest the raw little-endian data of each input
that says `"parameters": {"binary_data_size": n}`, in order. An output asked for with
`"binary_data": true` (or all of them, with the request parameter `binary_data_output`) comes
back the same way (BYTES elements as a 4-byte little-endian length and the bytes).
Every error is status 400 (404 for an unknown model) with `{"error": "..."}`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnntool.data import preprocess
from cnntool.errors import InputError
from cnntool.serve.inputs import pixels_array

INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "index", "label")
HEADER_LENGTH = "inference-header-content-length"
# The numeric datatypes the protocol names, as little-endian numpy types.
DATATYPES = {
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=f"The input's name: {INPUT_NAME!r}.")
    shape: list[int] = Field(description="[N, C, H, W], or [N, H, W] for a one-channel model.")
    datatype: str = Field(description="UINT8 (or another integer type) for pixels 0-255; FP32 for floats.")
    parameters: dict[str, Any] | None = Field(
        default=None, description='`{"binary_data_size": n}` when the data follows the JSON as bytes.'
    )
    data: list[Any] | None = Field(default=None, description="The values, flat or nested, row-major.")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["probabilities", "index", "label"]
    parameters: dict[str, Any] | None = Field(default=None, description='`{"binary_data": true}` for bytes.')


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        default=None, description='`{"binary_data_output": true}` for every output as bytes.'
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="The outputs wanted; all if none.")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


def model_metadata(name: str, input_shape: tuple[int, ...], classes: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": ["1"],
        "platform": "cnntool",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
            {"name": "index", "datatype": "INT64", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


def infer_request_schema(input_shapes: list[tuple[int, int, int]]) -> dict[str, Any]:
    """JSON schema of a JSON-only inference request for models of these input shapes: one input
    of one row, UINT8 pixels or FP32 values 0-255 (the server takes any N rows, and binary data,
    which a JSON schema cannot tie to the shape)."""

    def tensor(shape: tuple[int, int, int], datatype: str, number: str) -> dict[str, Any]:
        size = math.prod(shape)
        return {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "enum": [INPUT_NAME]},
                "shape": {"type": "array", "enum": [[1, *shape]]},
                "datatype": {"type": "string", "enum": [datatype]},
                "data": {
                    "type": "array",
                    "minItems": size,
                    "maxItems": size,
                    "items": {"type": number, "minimum": 0, "maximum": 255},
                },
            },
        }

    shapes = list(dict.fromkeys(input_shapes))
    kinds = (("UINT8", "integer"), ("FP32", "number"))
    tensors = [tensor(shape, datatype, number) for shape in shapes for datatype, number in kinds]
    flag = {"type": "boolean"}
    return {
        "type": "object",
        "title": "InferenceRequest",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"binary_data_output": flag},
            },
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"anyOf": tensors}},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "enum": list(OUTPUT_NAMES)},
                        "parameters": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"binary_data": flag},
                        },
                    },
                },
            },
        },
        "example": {
            "id": "example",
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": [1, *shapes[0]],
                    "datatype": "UINT8",
                    "data": [0] * math.prod(shapes[0]),
                }
            ],
        },
    }


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON request and the binary data after it (empty without the binary extension)."""
    if header_length is None:
        document, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError(
                f"Inference-Header-Content-Length is {header_length!r}; expected the length of the JSON "
                f"header, at most the body's {len(body)} bytes"
            )
        document, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = InferenceRequest.model_validate_json(document)
    except ValidationError as exc:
        raise InputError(f"malformed inference request: {validation_text(exc)}") from None
    return request, binary


def validation_text(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "request"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def model_input(
    request: InferenceRequest, binary: bytes, input_shape: tuple[int, int, int], preprocessing: dict
) -> np.ndarray:
    """The request's one input tensor as model input (N, C, H, W) float32, each row checked and
    preprocessed on its own, as `/v1/predict` does."""
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InputError(f"unknown input {tensor.name!r}; the model's input is {INPUT_NAME!r}")
    array = tensor_array(tensor, binary)
    channels, height, width = input_shape
    expected = [[-1, channels, height, width]] + ([[-1, height, width]] if channels == 1 else [])
    if not any(array.ndim == len(shape) and list(array.shape[1:]) == shape[1:] for shape in expected):
        accepted = " or ".join(str(shape) for shape in expected)
        raise InputError(f"input {INPUT_NAME!r} has shape {list(array.shape)}; expected {accepted}")
    if len(array) == 0:
        raise InputError(f"input {INPUT_NAME!r} holds no rows; send at least one (shape [N, ...], N >= 1)")
    where = f"input {INPUT_NAME!r} row"
    rows = [pixels_array(row, f"{where} {index}", input_shape) for index, row in enumerate(array)]
    return np.concatenate([preprocess(row[np.newaxis], preprocessing) for row in rows])


def tensor_array(tensor: RequestInput, binary: bytes) -> np.ndarray:
    """The tensor's values as an array of its shape and datatype, from JSON or binary data."""
    where = f"input {tensor.name!r}"
    if tensor.datatype not in DATATYPES:
        raise InputError(
            f"{where}: datatype {tensor.datatype!r} is not supported; send UINT8 pixels or FP32 values"
        )
    if any(size < 0 for size in tensor.shape):
        raise InputError(f"{where}: shape {tensor.shape} has a negative size")
    dtype = np.dtype(DATATYPES[tensor.datatype])
    count = math.prod(tensor.shape)
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        if tensor.data is not None:
            raise InputError(f"{where}: has both data and binary_data_size; send one")
        expected = count * dtype.itemsize
        if binary_size != expected or len(binary) != expected:
            raise InputError(
                f"{where}: shape {tensor.shape} of {tensor.datatype} needs {expected} bytes; "
                f"binary_data_size is {binary_size!r} and {len(binary)} bytes follow the JSON header"
            )
        return np.frombuffer(binary, dtype).reshape(tensor.shape)
    if binary:
        raise InputError(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
    if tensor.data is None:
        raise InputError(f"{where}: has neither data nor binary_data_size")
    try:
        values = np.array(tensor.data)
    except (ValueError, OverflowError):
        raise InputError(f"{where}: data is not a flat or rectangular nested list of numbers") from None
    if values.dtype.kind not in "iuf" and values.size:
        raise InputError(f"{where}: data must be numbers")
    if values.dtype.kind == "f" and dtype.kind in "iu":
        # 77.0 is an integer to JSON (and to many JSON writers); 77.5 is not.
        if not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise InputError(f"{where}: datatype {tensor.datatype} takes integers; found fractional numbers")
        if values.size and values.min() >= 0 and values.max() <= 255:  # else the range check refuses it
            values = values.astype(np.int64)
    if values.size != count:
        raise InputError(f"{where}: shape {tensor.shape} holds {count} values; data has {values.size}")
    # Integers stay as they came (the pixel range check follows); floats take the datatype.
    return values.reshape(tensor.shape) if dtype.kind in "iu" else values.astype(dtype).reshape(tensor.shape)


def wanted_outputs(request: InferenceRequest) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to answer, in the order asked."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is None:
        return [(name, binary_default) for name in OUTPUT_NAMES]
    wanted: list[tuple[str, bool]] = []
    for output in request.outputs:
        parameters = output.parameters or {}
        if "classification" in parameters:
            raise InputError("the classification extension is not supported; ask for 'index' and 'label'")
        wanted.append((output.name, bool(parameters.get("binary_data", binary_default))))
    return wanted


def response_body(
    name: str, request: InferenceRequest, probabilities: np.ndarray, classes: list[str]
) -> tuple[bytes, int | None]:
    """The response body and, when binary outputs follow the JSON, the JSON's length."""
    best = np.argmax(probabilities, axis=1)
    values = {
        "probabilities": ("FP32", list(probabilities.shape), probabilities.astype("<f4")),
        "index": ("INT64", [len(best)], best.astype("<i8")),
        "label": ("BYTES", [len(best)], [classes[i] for i in best]),
    }
    outputs, chunks = [], []
    for output_name, binary in wanted_outputs(request):
        datatype, shape, value = values[output_name]
        output: dict[str, Any] = {"name": output_name, "datatype": datatype, "shape": shape}
        if binary:
            chunk = bytes_chunk(value) if datatype == "BYTES" else value.tobytes()
            output["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            output["data"] = value if datatype == "BYTES" else value.reshape(-1).tolist()
        outputs.append(output)
    document: dict[str, Any] = {"model_name": name, "model_version": "1"}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def bytes_chunk(texts: list[str]) -> bytes:
    """BYTES elements in the binary extension: each a 4-byte little-endian length and the bytes."""
    parts = []
    for text in texts:
        encoded = text.encode()
        parts += [len(encoded).to_bytes(4, "little"), encoded]
    return b"".join(parts)
