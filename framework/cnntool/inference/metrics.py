"""Classification metrics: the confusion matrix, per-class precision, recall and F1, and the
mistakes a model makes most often.

Definitions as in scikit-learn, from the confusion matrix M (rows: true class, columns:
predicted class): precision_k = M[k, k] / sum_i M[i, k] (of the examples predicted as k, the
share that are k), recall_k = M[k, k] / sum_j M[k, j] (of the examples of k, the share found),
F1 their harmonic mean; each is 0 where its denominator is. The macro average is the plain
mean over the classes that occur in the test labels, the weighted average weighs each class
by its number of examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.errors import DataError
from cnntool.inference.evaluate import evaluate

TOP_CONFUSIONS = 10


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of true class i predicted as class j."""
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def per_class(matrix: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support (number of examples) of every class."""
    rows = []
    for k in range(matrix.shape[0]):
        predicted, actual = int(matrix[:, k].sum()), int(matrix[k].sum())
        hits = int(matrix[k, k])
        precision = hits / predicted if predicted else 0.0
        recall = hits / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": actual})
    return rows


def averages(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Macro (plain mean) and weighted (by support) averages over the classes with examples."""
    present = [row for row in rows if row["support"]]
    total = sum(row["support"] for row in present)
    result = {}
    for kind in ("macro", "weighted"):
        weights = [1 / len(present) if kind == "macro" else row["support"] / total for row in present]
        result[kind] = {
            metric: float(sum(w * row[metric] for w, row in zip(weights, present, strict=True)))
            for metric in ("precision", "recall", "f1")
        }
    return result


def top_confusions(matrix: np.ndarray, classes: list[str], count: int = TOP_CONFUSIONS) -> list[dict]:
    """The most frequent mistakes: (true class, predicted class) pairs off the diagonal."""
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
    mistakes = []
    for flat in order:
        true, predicted = divmod(int(flat), matrix.shape[1])
        if off_diagonal[true, predicted] == 0:
            break
        mistakes.append(
            {
                "true": classes[true],
                "predicted": classes[predicted],
                "count": int(matrix[true, predicted]),
                "share_of_true": float(matrix[true, predicted] / matrix[true].sum()),
            }
        )
    return mistakes


def check_dataset_fits(net: Any, dataset: Any) -> None:
    """Refuse a test set the model cannot have been trained for: another image shape, more
    classes than it has outputs, or class names that differ from the model's whenever the
    data names its classes (numbers such as mnist's "0"-"9" included)."""
    if tuple(dataset.input_shape) != tuple(net.input_shape):
        raise DataError(
            f"the images of {dataset.name} have shape {list(dataset.input_shape)} (C, H, W) but the "
            f"model takes {list(net.input_shape)}; evaluate on data like the data it was trained on"
        )
    if len(dataset.classes) > len(net.classes):
        raise DataError(
            f"{dataset.name} has {len(dataset.classes)} classes but the model has {len(net.classes)} "
            f"({', '.join(net.classes)})"
        )
    if getattr(dataset, "named_classes", False):
        theirs = list(dataset.classes)
        if list(net.classes[: len(theirs)]) != theirs:
            raise DataError(
                f"{dataset.name} names its classes {', '.join(theirs)} but the model's are "
                f"{', '.join(net.classes)}; the model was trained on other classes"
            )


def classification_report(bundle: Any, dataset: Any) -> dict[str, Any]:
    """Loss, accuracy, per-class precision/recall/F1, their averages, the confusion matrix and
    the most frequent mistakes of a bundle on the test split of a dataset, with the bundle's
    recorded preprocessing."""
    net = bundle.network
    check_dataset_fits(net, dataset)
    if len(dataset.x_test) == 0:
        raise DataError(f"the dataset {dataset.name} has no test split")
    scores = evaluate(net, dataset.x_test, dataset.y_test, bundle.preprocessing)
    classes = list(net.classes)
    matrix = confusion_matrix(dataset.y_test, scores["predictions"], len(classes))
    rows = per_class(matrix)
    return {
        "bundle": str(bundle.path),
        "dataset": dataset.name,
        "source": dataset.info.get("source"),
        "examples": len(dataset.y_test),
        "loss": scores["loss"],
        "accuracy": scores["accuracy"],
        "preprocessing": bundle.preprocessing,
        "classes": classes,
        "per_class": [{"class": name, **row} for name, row in zip(classes, rows, strict=True)],
        "average": averages(rows),
        "confusion_matrix": matrix.tolist(),
        "top_confusions": top_confusions(matrix, classes),
    }
