"""Classification metrics from predictions: confusion matrix, precision, recall."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.errors import DataError


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of true class i predicted as class j."""
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def per_class(matrix: np.ndarray) -> list[dict[str, Any]]:
    """Precision (of the predictions of a class, the share that is right) and recall (of the
    examples of a class, the share found); 0 when undefined."""
    rows = []
    for k in range(matrix.shape[0]):
        predicted, actual = int(matrix[:, k].sum()), int(matrix[k].sum())
        hits = int(matrix[k, k])
        rows.append(
            {
                "precision": hits / predicted if predicted else 0.0,
                "recall": hits / actual if actual else 0.0,
                "support": actual,
            }
        )
    return rows


def classification_report(bundle: Any, dataset: Any) -> dict[str, Any]:
    """Loss, accuracy, per-class precision/recall and the confusion matrix on the test split."""
    from cnntool.train import evaluate

    net = bundle.network
    if tuple(dataset.input_shape) != tuple(net.input_shape):
        raise DataError(
            f"the dataset's images are {list(dataset.input_shape)} but the model expects "
            f"{list(net.input_shape)}"
        )
    if len(dataset.x_test) == 0:
        raise DataError(f"the dataset {dataset.name} has no test split")
    scores = evaluate(net, dataset.x_test, dataset.y_test, bundle.preprocessing)
    classes = len(net.classes)
    matrix = confusion_matrix(dataset.y_test, scores["predictions"], classes)
    return {
        "bundle": str(bundle.path),
        "dataset": dataset.name,
        "examples": len(dataset.y_test),
        "loss": scores["loss"],
        "accuracy": scores["accuracy"],
        "classes": list(net.classes),
        "per_class": per_class(matrix),
        "confusion_matrix": matrix.tolist(),
    }
