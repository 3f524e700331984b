"""`cnntool plot`: a picture of a bundle's training history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import note, print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def plot(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `cnntool train`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image to write: .png, .svg or .pdf.")] = Path(
        "history.png"
    ),
    json_output: Annotated[
        bool, typer.Option("--json", help="Print where the picture went as JSON.")
    ] = False,
) -> None:
    """Draw loss and accuracy (training and validation) against epochs. Needs matplotlib:
    pip install 'cnntool[plot]'."""
    from cnntool.training.plotting import plot_bundle

    result = plot_bundle(bundle, out)
    if json_output:
        print_json(result)
    else:
        note(f"wrote {result['plot']} ({result['epochs']} epochs)")
