"""Printing for commands: JSON to stdout, messages and progress to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, allow_nan=False, default=str))


def note(message: str) -> None:
    typer.echo(message, err=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def format_epoch(record: dict, epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record['loss']:.4f}",
        f"accuracy {record['accuracy']:.4f}",
    ]
    if record.get("val_loss") is not None:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_accuracy {record['val_accuracy']:.4f}"]
    parts.append(f"{record['seconds']:.2f}s")
    return "  ".join(parts)


class EpochProgress:
    """A progress bar per epoch on a terminal; one plain line per epoch otherwise."""

    def __init__(self, epochs: int, enabled: bool = True) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.bar = None
        self.task = None
        if enabled and stderr_is_terminal():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> EpochProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def on_batch(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("epoch", total=total)
        if done % 16 == 0 or done == total:
            self.bar.update(self.task, completed=done, description=f"epoch {self.epoch}/{self.epochs}")

    epoch = 1

    def on_compile(self, seconds: float | None) -> None:
        """ "compiling kernels (once per machine)..." before, its time after, on one line."""
        if not self.enabled:
            return
        if seconds is None:
            typer.echo("compiling kernels (once per machine)...", err=True, nl=False)
            sys.stderr.flush()
        else:
            typer.echo(f" {seconds:.1f}s", err=True)

    def on_epoch(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.console.print(format_epoch(record, self.epochs))
            if self.task is not None:
                self.bar.reset(self.task)
        elif self.enabled:
            note(format_epoch(record, self.epochs))
        self.epoch = record["epoch"] + 1
