"""`cnntool inspect`: what a spec or bundle holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cnntool.cli.output import print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def inspect(
    file: Annotated[Path, typer.Argument(help="A bundle (.cnnb) or a spec (.json).", show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    dot: Annotated[
        bool, typer.Option("--dot", help="Print the network as a Graphviz DOT graph (dot -Tpng to draw it).")
    ] = False,
) -> None:
    """Show layers, the layers each reads, output shapes, parameters, FLOPs, providers and
    training history."""
    from cnntool.inference.inspect import dot_graph, file_summary

    info = file_summary(file)
    if dot:
        typer.echo(dot_graph(info), nl=False)
    elif json_output:
        print_json(info)
    else:
        render(info)


def render(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from cnntool.inference.inspect import is_graph, sparkline

    console = Console(highlight=False)
    title = f"{info['kind']} {info['name']!r}  input {tuple(info['input_shape'] or ())}"
    table = Table(title=title, title_justify="left")
    graph = is_graph(info["layers"])  # a stack reads the layer before: no column needed
    columns = [("#", "right"), ("name", "left"), ("type", "left"), *([("inputs", "left")] if graph else []),
               ("output shape", "left"), ("params", "right"), ("FLOPs", "right")]  # fmt: skip
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in info["layers"]:
        shape = "?" if row["output_shape"] is None else str(tuple(row["output_shape"]))
        flops = "?" if row["flops"] is None else f"{row['flops']:,}"
        inputs = [", ".join(row["inputs"])] if graph else []
        table.add_row(
            str(row["index"]), row["name"], row["type"], *inputs, shape, f"{row['params']:,}", flops
        )
    total_flops = "?" if info["total_flops"] is None else f"{info['total_flops']:,}"
    blank = [""] if graph else []
    table.add_row("", "total", "", *blank, "", f"{info['total_params']:,}", total_flops, end_section=True)
    console.print(table)
    if info.get("classes"):
        console.print(
            f"classes: {', '.join(info['classes'][:20])}{' ...' if len(info['classes']) > 20 else ''}"
        )
    console.print("providers: " + ", ".join(f"{k} ({v})" for k, v in sorted(info["providers"].items())))
    memory = info.get("activation_memory")
    if memory:
        shared = ", buffers shared" if memory["compiled"] else ", layer by layer"
        console.print(
            f"activations per example: {kib(memory['inference'])} inference{shared};"
            f" {kib(memory['training'])} training"
        )
    for problem in info.get("problems", []):
        console.print(f"cannot run here: {problem}")
    if info.get("execution") is not None:
        from cnntool.model.execution import execution_line

        console.print(execution_line(info["execution"]))
    if info["kind"] != "bundle":
        return
    meta = info["meta"]
    console.print(
        f"digest: {info['digest']}  ({info['file_bytes']:,} bytes, format {info['format_version']})"
    )
    console.print(f"created {meta.get('created_at', '?')} with cnntool {meta.get('cnntool_version', '?')}")
    dataset = meta.get("dataset")
    if isinstance(dataset, dict):
        sizes = f"{dataset.get('train_size', '?')} train, {dataset.get('test_size', '?')} test"
        console.print(f"dataset: {dataset.get('name', '?')} ({sizes})")
    history = info.get("history") or []
    if history:
        table = Table(
            title=f"history  loss {sparkline([r.get('loss') for r in history])}", title_justify="left"
        )
        for column in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
            table.add_column(column, justify="right")
        for record in history:
            table.add_row(
                *(
                    fmt(record.get(c))
                    for c in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
                )
            )
        console.print(table)
    test = meta.get("test")
    if isinstance(test, dict):
        console.print(f"test: loss {fmt(test.get('loss'))}  accuracy {fmt(test.get('accuracy'))}")


def kib(size: int) -> str:
    return f"{size / 1024:,.1f} KiB"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
