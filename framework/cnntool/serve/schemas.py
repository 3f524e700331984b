"""The JSON documents of the HTTP API, as pydantic models (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PREDICT_DESCRIPTION = (
    "Inputs to classify. Each is nested lists shaped like the model input (C, H, W), or (H, W) for a "
    "one-channel model; integers are 0-255 pixels, floats in [0, 1] intensities (floats above 1 "
    "count as 0-255 pixels)."
)


class ClassProbability(BaseModel):
    index: int
    label: str
    probability: float


class Prediction(BaseModel):
    """One input's result, the same record `cnntool infer --json` prints (without `input`)."""

    index: int = Field(description="Index of the most likely class.")
    label: str = Field(description="Name of the most likely class.")
    probability: float = Field(description="Its probability.")
    top: list[ClassProbability] = Field(description="The top_k most likely classes, best first.")
    probabilities: list[float] = Field(description="Every class's probability, in class order.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per input, in input order.")


class TrainingSummary(BaseModel):
    epochs: int | None = Field(description="Epochs trained (length of the stored history).")
    final_loss: float | None
    final_accuracy: float | None
    final_val_loss: float | None
    final_val_accuracy: float | None
    test: dict[str, Any] | None = Field(description="Score on the dataset's test split, when recorded.")
    dataset: str | None = Field(description="Name of the training dataset.")


class ModelInfo(BaseModel):
    name: str
    input_shape: list[int]
    classes: list[str]
    parameters: int = Field(description="Number of trained parameters.")
    digest: str = Field(description="sha256 over the weights: the model's identity.")
    cnntool_version: str = Field(description="The cnntool serving the model.")
    created_with: str | None = Field(description="The cnntool version that wrote the bundle.")
    created_at: str | None
    providers: dict[str, str] = Field(description="Distribution providing each layer type.")
    preprocessing: dict[str, float | str]
    training: TrainingSummary


class ListedModel(ModelInfo):
    model: str = Field(description="The model's name in the URLs: its bundle's file name without .cnnb.")


class ModelList(BaseModel):
    models: list[ListedModel]


class Status(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong with the request, or why it cannot be served.")


def pixels_schema(input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """JSON schema of one input of `input_shape`: nested lists (C, H, W), or (H, W) for one
    channel, of numbers from 0 to 255 (integers are pixels, floats up to 1 intensities)."""

    def nested(sizes: tuple[int, ...]) -> dict[str, Any]:
        if not sizes:
            return {"type": "number", "minimum": 0, "maximum": 255}
        return {"type": "array", "minItems": sizes[0], "maxItems": sizes[0], "items": nested(sizes[1:])}

    channels, height, width = input_shape
    shapes = [nested(input_shape)] + ([nested((height, width))] if channels == 1 else [])
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}


def predict_request_schema(input_shapes: list[tuple[int, int, int]]) -> dict[str, Any]:
    """The schema of `{"inputs": [...]}` for models of these input shapes, with an example
    that the first of them accepts: one blank input."""
    items = [pixels_schema(shape) for shape in dict.fromkeys(input_shapes)]
    channels, height, width = input_shapes[0]
    blank = [[0] * width] * height if channels == 1 else [[[0] * width] * height] * channels
    return {
        "type": "object",
        "title": "PredictRequest",
        "description": PREDICT_DESCRIPTION,
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": items[0] if len(items) == 1 else {"anyOf": items},
            }
        },
        "example": {"inputs": [blank]},
    }
