"""`cnntool data`: the named datasets, what a dataset holds, and downloading ahead of time."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnntool.cli.output import note, print_json

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).

app = typer.Typer(
    name="data",
    help="List, describe and download datasets.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

NOT_HERE = "not downloaded"
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def list_datasets(json_output: JsonOption = False) -> None:
    """The named datasets and whether each is here (bundled, installed, cached) or not yet."""
    rows = [named_summary(name) for name in all_names()]
    if json_output:
        print_json(rows)
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        if row["state"] == NOT_HERE:
            where = f"{NOT_HERE}; `cnntool data download {row['name']}` puts it in {row['folder']}"
        else:
            where = f"{row['state']}: {row['folder']}" if row["folder"] else row["state"]
        typer.echo(
            f"{row['name']:<{width}}  {row['train_size']:>6} train  {row['test_size']:>6} test  "
            f"{row['description']}  [{where}]"
        )


def info(
    source: Annotated[
        str,
        typer.Argument(
            help="A dataset name, or a folder (IDX files or class folders of images) or an .npz.",
            show_default=False,
        ),
    ],
    json_output: JsonOption = False,
) -> None:
    """What a dataset holds: sizes, image shape, classes with their counts, files with their
    sha256; for a named dataset also where it comes from and whether it is here."""
    from cnntool.data import load_dataset
    from cnntool.data.catalog import NAMED, find_local

    record: dict[str, Any] = {}
    if source in NAMED:
        record = named_summary(source) | catalog_details(source)
        if find_local(NAMED[source]) is None:
            print_info(record, json_output)
            return
    record.update(dataset_summary(load_dataset(source)))
    print_info(record, json_output)


def download(
    names: Annotated[
        list[str], typer.Argument(help="Named datasets: mnist, fashion-mnist.", show_default=False)
    ],
    json_output: JsonOption = False,
) -> None:
    """Download named datasets into the cache now (each file checked by sha256), unless an
    installed or cached copy is already here."""
    from cnntool.data.catalog import NAMED, find_local, locate
    from cnntool.errors import DataError

    unknown = [name for name in names if name not in NAMED]
    if unknown:
        raise DataError(
            f"unknown dataset {', '.join(repr(name) for name in unknown)}; "
            f"the downloadable ones are {', '.join(NAMED)}"
        )
    results = []
    for name in names:
        before = find_local(NAMED[name])
        folder = locate(NAMED[name])
        state = "already here" if before is not None else "downloaded"
        results.append({"name": name, "folder": str(folder), "state": state})
        note(f"{name}: {state}, {folder}")
    if json_output:
        print_json(results)


def all_names() -> list[str]:
    from cnntool.data.catalog import NAMED
    from cnntool.data.sample import SAMPLE_NAME

    return [SAMPLE_NAME, *NAMED]


def named_summary(name: str) -> dict[str, Any]:
    """Name, description, sizes and where it is (state and folder)."""
    from cnntool.data.catalog import NAMED, data_root, find_local
    from cnntool.data.sample import SAMPLE_NAME

    if name == SAMPLE_NAME:
        return {
            "name": name,
            "description": "5,000 MNIST digits shipped with cnntool",
            "train_size": 4000,
            "test_size": 1000,
            "state": "bundled",
            "folder": None,
        }
    entry = NAMED[name]
    folder = find_local(entry)
    if folder is None:
        state = NOT_HERE
        target = data_root() / name
    else:
        state = "installed" if folder in entry.system_folders else "cached"
        target = folder
    return {
        "name": name,
        "description": entry.description,
        "train_size": entry.train_size,
        "test_size": entry.test_size,
        "state": state,
        "folder": str(target),
    }


def catalog_details(name: str) -> dict[str, Any]:
    from cnntool.data.catalog import NAMED

    entry = NAMED[name]
    return {
        "classes": list(entry.classes),
        "input_shape": list(entry.input_shape),
        "homepage": entry.homepage,
        "license": entry.license,
        "mirrors": entry.urls(),
        "files": [{"name": f.name, "bytes": f.bytes, "sha256": f.sha256} for f in entry.files.values()],
    }


def dataset_summary(dataset: Any) -> dict[str, Any]:
    """What was loaded: sizes, shape, pixel type, classes with counts, provenance."""
    import numpy as np

    classes = len(dataset.classes)
    train_counts = np.bincount(dataset.y_train, minlength=classes).tolist()
    test_counts = np.bincount(dataset.y_test, minlength=classes).tolist()
    return {
        **dataset.info,
        "pixels": str(dataset.x_train.dtype),
        "classes": list(dataset.classes),
        "class_counts": [
            {"class": name, "train": train, "test": test}
            for name, train, test in zip(dataset.classes, train_counts, test_counts, strict=True)
        ],
    }


def print_info(record: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(record)
        return
    for key, value in record.items():
        if key == "class_counts":
            width = max(len(row["class"]) for row in value)
            typer.echo("classes (train / test examples):")
            for row in value:
                typer.echo(f"  {row['class']:<{width}}  {row['train']:>7}  {row['test']:>7}")
        elif key == "files":
            typer.echo("files:")
            for file in value:
                extra = f", {file['images']} images" if "images" in file else ""
                typer.echo(f"  {file['name']}  {file['bytes']} bytes{extra}  sha256 {file['sha256']}")
        elif key == "classes" and "class_counts" in record:
            continue
        elif isinstance(value, list):
            typer.echo(f"{key}: {', '.join(str(item) for item in value)}")
        elif isinstance(value, dict):
            typer.echo(f"{key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        else:
            typer.echo(f"{key}: {value}")
