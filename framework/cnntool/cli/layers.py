"""`cnntool layers` and `cnntool schema`: what layer types exist and what a spec may say."""

from __future__ import annotations

import json
from typing import Annotated, TypedDict

import typer

from cnntool.cli.output import print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


class LayerRow(TypedDict):
    """One layer type in `cnntool layers` (and its --json)."""

    type: str
    distribution: str
    version: str
    provider: str
    object: str
    builtin: bool
    status: str
    error: str | None


def layers(
    json_output: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List registered layer types and the distribution providing each, with the plugins
    that failed to load and why."""
    from cnntool.model.registry import conflict_message, get_registry

    registry = get_registry()
    registry.load_all()
    claims = [(name, [entry]) for name, entry in registry.types.items()]
    claims += [(entry.name, [entry]) for entry in registry.rejected]
    claims += list(registry.conflicts.items())
    rows: list[LayerRow] = []
    for name, entries in sorted(claims, key=lambda claim: (claim[0], claim[1][0].builtin is False)):
        error: str | None
        if len(entries) > 1:
            status, error = "conflict", conflict_message(name, entries)
        elif entries[0] in registry.rejected:
            status, error = "rejected", entries[0].error
        else:
            status, error = ("ok", None) if entries[0].error is None else ("failed", entries[0].error)
        rows.append(
            {
                "type": name,
                "distribution": " and ".join(e.distribution for e in entries),
                "version": " and ".join(e.version for e in entries),
                "provider": " and ".join(e.provider for e in entries),
                "object": " and ".join(e.value for e in entries),
                "builtin": entries[0].builtin,
                "status": status,
                "error": error,
            }
        )
    if json_output:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table()
    for column in ("type", "distribution", "version", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["type"], row["distribution"], row["version"], row["status"])
    console.print(table)


def schema(
    json_output: Annotated[
        bool, typer.Option("--json", help="Accepted for symmetry: the schema is always JSON.")
    ] = False,
) -> None:
    """Print the JSON Schema of network specs (for every installed layer type)."""
    from cnntool.model.registry import get_registry

    typer.echo(json.dumps(get_registry().spec_model().model_json_schema(), indent=2))
