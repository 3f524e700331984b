"""`cnntool eval`: loss, accuracy and confusion matrix of a bundle on a dataset's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import print_json


def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle (.cnnb).", show_default=False)],
    data: Annotated[str, typer.Option(help="Dataset: mnist-sample, a folder of IDX files, or an .npz file.")],
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for numba and BLAS.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate a bundle on the test split of a dataset, with its recorded preprocessing."""
    from cnntool.bundle import load_bundle
    from cnntool.data import load_dataset
    from cnntool.metrics import classification_report
    from cnntool.threads import set_threads

    loaded = load_bundle(bundle)
    dataset = load_dataset(data)
    set_threads(threads)
    report = classification_report(loaded, dataset)
    if json_output:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(
        f"{report['dataset']} test split, {report['examples']} examples: "
        f"loss {report['loss']:.4f}  accuracy {report['accuracy']:.4f}"
    )
    classes = report["classes"]
    table = Table(title="per class", title_justify="left")
    for column in ("class", "precision", "recall", "support"):
        table.add_column(column, justify="right")
    for name, row in zip(classes, report["per_class"], strict=True):
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", str(row["support"]))
    console.print(table)
    matrix = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    matrix.add_column("")
    for name in classes:
        matrix.add_column(name, justify="right")
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        matrix.add_row(name, *(str(v) for v in row))
    console.print(matrix)
