"""`cnntool eval`: how a bundle does on a dataset's test split, and where it goes wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cnntool.cli.output import print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).

# Above this many classes the text report leaves the confusion matrix to --json.
MATRIX_MAX_CLASSES = 20


def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle (.cnnb).", show_default=False)],
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset: mnist-sample, mnist, fashion-mnist, a folder (IDX files or class folders "
            "of images) or an .npz [the dataset the bundle was trained on]."
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for numba and BLAS.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate a bundle on the test split of a dataset, with its recorded preprocessing:
    loss, accuracy, per-class precision/recall/F1, confusion matrix, most frequent mistakes."""
    from cnntool.bundle import load_bundle
    from cnntool.data import load_dataset
    from cnntool.inference.metrics import classification_report
    from cnntool.system.threads import set_threads

    loaded = load_bundle(bundle)
    source = data if data is not None else recorded_dataset(loaded)
    dataset = load_dataset(source, input_shape=tuple(loaded.network.input_shape))
    set_threads(threads)
    report = classification_report(loaded, dataset)
    if json_output:
        print_json(report)
    else:
        typer.echo(format_report(report))


def recorded_dataset(bundle: Any) -> str:
    """The dataset a bundle was trained on, for `eval` without --data: its name when it is a
    named one, else the path it was read from, when that is still there."""
    from cnntool.data.catalog import NAMED
    from cnntool.data.sample import SAMPLE_NAME
    from cnntool.errors import DataError

    recorded = bundle.meta.get("dataset") or {}
    name = recorded.get("name")
    if name in NAMED or name == SAMPLE_NAME:
        return name
    if name is None:
        raise DataError(f"{bundle.path}: the bundle does not record its dataset; pass --data")
    source = recorded.get("source")
    if isinstance(source, str) and source and Path(source).exists():
        return source
    raise DataError(
        f"{bundle.path}: trained on {name}, which is not a named dataset (mnist-sample, "
        f"{', '.join(NAMED)}) and {source or name} is not there any more; pass --data with where it is now"
    )


def format_report(report: dict[str, Any]) -> str:
    """The report as text: scores, a per-class table, the confusion matrix, the top mistakes."""
    classes = report["classes"]
    lines = [
        f"{report['dataset']}: test split, {report['examples']} examples",
        f"loss {report['loss']:.4f}  accuracy {report['accuracy']:.4f}",
        "",
    ]
    width = max(len("weighted avg"), *(len(name) for name in classes))
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for row in report["per_class"]:
        lines.append(
            f"{row['class']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:6.4f}  {row['support']:7d}"
        )
    for kind, scores in report["average"].items():
        label = f"{kind} avg"
        lines.append(
            f"{label:<{width}}  {scores['precision']:9.4f}  {scores['recall']:6.4f}  "
            f"{scores['f1']:6.4f}  {report['examples']:7d}"
        )
    lines.append("")
    matrix = report["confusion_matrix"]
    if len(classes) <= MATRIX_MAX_CLASSES:
        lines.append("confusion matrix (rows: true class, columns: predicted class by index)")
        cell = max(3, len(str(max(max(row) for row in matrix))))
        digits = len(str(len(classes) - 1))
        # Rows name their class too, unless the names are just the indices.
        numbered = classes == [str(index) for index in range(len(classes))]
        labels = [
            f"{index:>{digits}}" + ("" if numbered else f" {name:<{width}}")
            for index, name in enumerate(classes)
        ]
        lines.append(" " * len(labels[0]) + "".join(f" {index:>{cell}}" for index in range(len(classes))))
        for label, row in zip(labels, matrix, strict=True):
            lines.append(label + "".join(f" {count:>{cell}}" for count in row))
    else:
        lines.append(f"confusion matrix: {len(classes)} x {len(classes)}, printed with --json")
    mistakes = report["top_confusions"]
    if mistakes:
        lines += ["", "most frequent mistakes (true -> predicted)"]
        for mistake in mistakes:
            lines.append(
                f"  {mistake['true']} -> {mistake['predicted']}: {mistake['count']} "
                f"({mistake['share_of_true']:.1%} of {mistake['true']})"
            )
    return "\n".join(lines)
