"""`cnntool layers` and `cnntool schema`: what layer types exist and what a spec may say."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cnntool.cli.output import print_json


def layers(
    json_output: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List registered layer types and the distribution providing each."""
    from cnntool.registry import conflict_message, get_registry

    registry = get_registry()
    registry.load_all()
    rows = [
        {
            "type": name,
            "distribution": entry.distribution,
            "version": entry.version,
            "object": entry.value,
            "builtin": entry.builtin,
            "status": "ok" if entry.error is None else "failed",
            "error": entry.error,
        }
        for name, entry in sorted(registry.types.items())
    ]
    for name, claimants in sorted(registry.conflicts.items()):
        rows.append(
            {
                "type": name,
                "distribution": " and ".join(e.distribution for e in claimants),
                "version": " and ".join(e.version for e in claimants),
                "object": " and ".join(e.value for e in claimants),
                "builtin": False,
                "status": "conflict",
                "error": conflict_message(name, claimants),
            }
        )
    if json_output:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("type", "distribution", "version", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["type"], row["distribution"], row["version"], row["status"])
    Console(highlight=False).print(table)


def schema() -> None:
    """Print the JSON Schema of network specs (for every installed layer type)."""
    from cnntool.registry import get_registry

    typer.echo(json.dumps(get_registry().spec_model().model_json_schema(), indent=2))
