"""Printing for commands: JSON to stdout, messages and progress to stderr."""

from __future__ import annotations

import json
import sys
from time import perf_counter
from typing import TYPE_CHECKING, Any, Self

import typer

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


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


class TerminalBar:
    """A rich progress bar (`self.bar`) shown while the `with` block runs, or None when
    there is no terminal; subclasses make the bar and feed it."""

    bar: Progress | None = None

    def __enter__(self) -> Self:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


class EpochProgress(TerminalBar):
    """A progress bar per epoch on a terminal, with images per second and the time left in
    the epoch; one plain line per epoch otherwise. `console` (a rich Console) forces the bar."""

    def __init__(self, epochs: int, enabled: bool = True, batch_size: int = 1, console: Any = None) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.batch_size = batch_size
        self.bar = None
        self.task: TaskID | None = None
        self.started: float | None = None  # when the first batch of this epoch ended
        if enabled and (console is not None or stderr_is_terminal()):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=console or Console(stderr=True),
                transient=True,
            )

    def on_batch(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        now = perf_counter()
        if self.task is None:
            self.task = self.bar.add_task("epoch", total=total, rate="")
        if done == 1 or self.started is None:
            self.started = now
            return
        if done % 8 == 0 or done == total:
            rate = (done - 1) * self.batch_size / max(now - self.started, 1e-9)
            self.bar.update(
                self.task, completed=done, description=f"epoch {self.epoch}/{self.epochs}",
                rate=f"{rate:,.0f} img/s",
            )  # fmt: skip

    epoch = 1

    def on_compile(self, seconds: float | None) -> None:
        """ "compiling kernels (once per machine)..." before, its time after, on one line
        (on a terminal, the bar shows it meanwhile)."""
        message = "compiling kernels (once per machine)..."
        if not self.enabled:
            return
        if self.bar is not None:
            if seconds is None:
                self.task = self.bar.add_task(message, total=None, rate="")
            else:
                self.bar.console.print(f"{message} {seconds:.1f}s")
                assert self.task is not None  # added by the call before, with seconds None
                self.bar.remove_task(self.task)
                self.task = None
        elif seconds is None:
            typer.echo(message, err=True, nl=False)
            sys.stderr.flush()
            self.compiling = True
        else:
            typer.echo(f" {seconds:.1f}s", err=True)
            self.compiling = False

    compiling = False  # "compiling kernels..." printed without its end yet

    def __exit__(self, *exc: object) -> None:
        if self.compiling:  # compiling failed: end the line, so an error starts on its own
            typer.echo(" failed", err=True)
            self.compiling = False
        super().__exit__(*exc)

    def on_epoch(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.console.print(format_epoch(record, self.epochs))
            if self.task is not None:
                self.bar.reset(self.task, rate="")
            self.started = None
        elif self.enabled:
            note(format_epoch(record, self.epochs))
        self.epoch = record["epoch"] + 1
