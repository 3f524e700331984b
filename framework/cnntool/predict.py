"""Inference on raw inputs: preprocessing as the bundle records it, then probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def predict_raw(net: Any, x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Probabilities (N, classes) for raw inputs: uint8 pixels or float arrays (N, C, H, W)."""
    from cnntool.data import preprocess

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


def predict_files(bundle: Any, paths: list[Path], top_k: int = 3) -> list[dict[str, Any]]:
    """One record per example of every file (an image is one example, an array may hold many),
    in order; each names its file as `input` (and `item` when the file held several)."""
    from cnntool.data import load_input_file

    net = bundle.network
    fit = bundle.preprocessing.get("image_fit", "mnist")
    batches = [(path, load_input_file(path, net.input_shape, fit)) for path in paths]
    records = []
    for path, x in batches:
        probabilities = predict_raw(net, x, bundle.preprocessing)
        several = x.shape[0] > 1 or Path(path).suffix.lower() == ".npy"
        for item, row in enumerate(probabilities):
            record = {"input": str(path)}
            if several:
                record["item"] = item
            record.update(prediction_record(row, net.classes, top_k))
            records.append(record)
    return records
