"""`cnntool export` and `cnntool import`: bundles to and from ONNX and safetensors files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).

FORMAT_HELP = "onnx or safetensors; by default from the file's suffix."


def export_model(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.cnnb) to export.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help=".onnx or .safetensors", show_default=False)],
    fmt: Annotated[str | None, typer.Option("--format", help=FORMAT_HELP, show_default=False)] = None,
    softmax: Annotated[
        bool, typer.Option("--softmax", help="ONNX: add a `probabilities` output beside the logits.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Write a bundle's network as an ONNX inference graph (opset 17, dynamic batch; for
    onnxruntime, Netron, TensorRT), or its weights as safetensors with the spec in the metadata."""
    from cnntool.interchange import export_file

    report = export_file(bundle, out, fmt=fmt, softmax=softmax)
    if json_output:
        print_json(report)
    elif report["format"] == "onnx":
        typer.echo(
            f"wrote {report['path']} (ONNX opset {report['opset']}, {report['nodes']} nodes, "
            f"{report['initializers']} initializers, outputs {', '.join(report['outputs'])}; "
            f"{report['bytes']:,} bytes)"
        )
    else:
        typer.echo(
            f"wrote {report['path']} (safetensors, {report['tensors']} tensors; {report['bytes']:,} bytes)"
        )


def import_model(
    source: Annotated[Path, typer.Argument(help=".onnx or .safetensors", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle to write.", show_default=False)],
    spec: Annotated[
        Path | None,
        typer.Option(
            help="safetensors: the network the weights belong to (default: the spec in the file's metadata).",
            show_default=False,
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class names, comma-separated, or a file with one per line (default: the file's metadata).",
            show_default=False,
        ),
    ] = None,
    preprocessing: Annotated[
        str | None,
        typer.Option(
            help='Input preprocessing as JSON text or a JSON file, e.g. \'{"mean": 0.1307, "std": 0.3081}\' '
            "(pixel_scale, mean, std, image_fit, background; default: the file's metadata, else "
            "pixels / 255).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help=FORMAT_HELP, show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
) -> None:
    """Make a bundle from an ONNX model (made of the ops cnntool's layers cover), or from
    safetensors weights and a spec: matched by name, or by order and shape for another
    framework's names (a PyTorch state_dict)."""
    from cnntool.interchange import import_file

    report = import_file(
        source, out, fmt=fmt, spec=spec, classes=class_names(classes), preprocessing=preprocessing
    )
    if json_output:
        print_json(report)
        return
    if report.get("matched_by") == "order and shape":
        typer.echo("weights matched by order and shape (the file's names are not the spec's):")
        for key, found in report["mapping"].items():
            typer.echo(f"  {found} -> {key}")
    for key in report.get("skipped", []):
        typer.echo(f"  skipped {key}")
    for name in report.get("ignored_outputs", []):
        typer.echo(f"ignored the graph's other output {name!r}")
    typer.echo(f"wrote {report['path']} ({report['layers']} layers, digest {report['digest']})")


def class_names(given: str | None) -> list[str] | None:
    """A comma-separated list, or the lines of a file that exists."""
    if given is None:
        return None
    path = Path(given)
    if "," not in given and "\x00" not in given and path.is_file():
        from cnntool.interchange.common import read_limited

        text = read_limited(path, "a list of classes").decode("utf-8", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [name.strip() for name in given.split(",") if name.strip()]
