"""Inference on raw inputs: preprocessing as the bundle records it, then probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnntool.data import preprocess
from cnntool.errors import InputError
from cnntool.inference.run import make_tasks, run_here


def predict_raw(net: Any, x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Probabilities (N, classes) for raw inputs: uint8 pixels or float arrays (N, C, H, W)."""

    return net.predict_proba(preprocess(x, preprocessing))


def prediction_record(probabilities: np.ndarray, classes: list[str], top_k: int) -> dict[str, Any]:
    """The top class, the top-k classes and every probability of one example."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    best = int(order[0])
    return {
        "index": best,
        "label": classes[best],
        "probability": float(probabilities[best]),
        "top": [
            {"index": int(i), "label": classes[i], "probability": float(probabilities[i])} for i in order
        ],
        "probabilities": [float(p) for p in probabilities],
    }


def row_record(row: dict[str, Any], classes: list[str], top_k: int) -> dict[str, Any]:
    """A row of `cnntool.inference.run` as printed: its input, `item` (arrays only), then the
    error, or the top class, the top-k classes and every probability."""
    record: dict[str, Any] = {"input": row["input"]}
    if row["item"] is not None:
        record["item"] = row["item"]
    if row["error"] is not None:
        record["error"] = row["error"]
        return record
    record.update(prediction_record(np.array(row["probabilities"]), classes, top_k))
    return record


def predict_files(bundle: Any, paths: list[Path], top_k: int = 3) -> list[dict[str, Any]]:
    """One record per example of every file (an image is one example, an array may hold many;
    a folder is searched recursively for images), in order; each names its file as `input`
    (and `item` for an array). The first input that cannot be read raises its InputError."""

    net = bundle.network
    records = []
    for rows in run_here(bundle, make_tasks([Path(p) for p in paths], net.input_shape, 256)):
        for row in rows:
            if row["error"] is not None:
                raise InputError(row["error"])
            records.append(row_record(row, net.classes, top_k))
    return records
