"""The JSON documents of the HTTP API, as pydantic models (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """Inputs to classify. Each is nested lists shaped like the model input (C, H, W), or
    (H, W) for a one-channel model; integers are 0-255 pixels, floats in [0, 1] intensities
    (floats above 1 count as 0-255 pixels)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(min_length=1, examples=[[[[0, 0, 128, 255], [0, 64, 255, 0]]]])


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


class Status(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong with the request, or why it cannot be served.")
