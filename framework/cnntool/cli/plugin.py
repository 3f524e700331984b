"""`cnntool plugin check DIST`: the conformance checks on every layer type a distribution provides."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cnntool.cli.output import print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).

app = typer.Typer(
    name="plugin",
    help="Work with layer plugins: distributions in the `cnntool.layers` entry-point group.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def check(
    distribution: Annotated[
        str,
        typer.Argument(
            help="An installed distribution, e.g. cnntool-extras (`cnntool` checks the built-ins).",
            show_default=False,
        ),
    ],
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random inputs and weights.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print every result as JSON.")] = False,
) -> None:
    """Check every layer type DISTRIBUTION provides: config round trip, declared shapes against
    forward/backward and what the kernels write, gradients against finite differences,
    forward/backward twice, compiled against layer by layer (declared kernel calls), bundle
    save/load round trip. Runs each type on the examples its class declares (`examples()`), in
    a child process with bounds-checked kernels; exits 1 if any fails."""
    from cnntool.errors import PluginError
    from cnntool.model.registry import get_registry
    from cnntool.testing import check_distribution

    registry = get_registry()
    # In a child process: a layer that crashes it is a failed check, not the end of the command.
    results = check_distribution(distribution, seed=seed, registry=registry, isolate=True)
    entries = registry.distribution_entries(distribution)
    name, version = entries[0].distribution, entries[0].version
    failed = [result for result in results if not result.ok]
    if json_output:
        print_json(
            {
                "distribution": name,
                "version": version,
                "passed": not failed,
                "results": [result.as_dict() for result in results],
            }
        )
    else:
        render(name, version, results)
    if failed:
        raise PluginError(f"{name} {version}: {len(failed)} of {len(results)} checks failed")


def render(name: str, version: str, results: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from cnntool.testing import CHECKS

    console = Console(highlight=False)
    types = sorted({result.type for result in results})
    table = Table(title=f"{name} {version}: {len(types)} layer types", title_justify="left")
    for column in ("type", "example", *CHECKS):
        table.add_column(column)
    rows: dict[tuple, dict[str, str]] = {}
    for result in results:
        example = "not checked" if result.config is None else describe_example(result)
        outcome = "skip" if result.skipped else "ok" if result.ok else "FAILED"
        rows.setdefault((result.type, example), {})[result.check] = outcome
    for (layer_type, example), outcomes in rows.items():
        table.add_row(layer_type, example, *(outcomes.get(check, "-") for check in CHECKS))
    console.print(table)
    for result in results:
        if not result.ok:
            console.print(result.message)
    if all(result.ok for result in results):
        console.print(f"all {len(results)} checks passed")


def describe_example(result: Any) -> str:
    """'kernel_size=3 stride=2 on (3, 7, 6)': the example's settings beside the defaults."""
    settings = " ".join(f"{k}={json.dumps(v)}" for k, v in result.config.items() if k != "type")
    return f"{settings or 'defaults'} on {tuple(result.input_shape)}"
