"""Pictures of a training history: loss and accuracy, training and validation, and the
learning rate, per epoch.

Built on a bare matplotlib `Figure` with the Agg canvas (no pyplot, no display, no global
state), so it works on servers and in threads. matplotlib is an optional dependency:
`pip install 'cnntool[plot]'`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnntool.bundle import read_bundle
from cnntool.errors import CnntoolError

SERIES = (("loss", "loss"), ("accuracy", "accuracy"))


def require_matplotlib() -> Any:
    try:
        # matplotlib is the optional plot extra: imported where it is used
        import matplotlib
    except ImportError:
        raise CnntoolError(
            "plotting needs matplotlib, which is not installed: pip install 'cnntool[plot]'"
        ) from None
    return matplotlib


def history_figure(history: list[dict], *, title: str | None = None, best_epoch: int | None = None) -> Any:
    """A figure with panels of loss and accuracy against the epoch, each with a `training`
    line and, where the history has validation scores, a `validation` line, and a third
    panel of the learning rate each epoch ended with (where the history records it); a
    dotted vertical line marks `best_epoch` (early stopping's pick)."""
    require_matplotlib()
    # matplotlib is the optional plot extra: imported where it is used
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    rates = [value(record.get("lr")) for record in history]
    panels = len(SERIES) + (not all(math.isnan(rate) for rate in rates))
    figure = Figure(figsize=(5 * panels, 4), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (key, label) in enumerate(SERIES):
        axes = figure.add_subplot(1, panels, index + 1)
        axes.plot(epochs, [value(record.get(key)) for record in history], "o-", label="training")
        validation = [value(record.get(f"val_{key}")) for record in history]
        if any(not math.isnan(v) for v in validation):
            axes.plot(epochs, validation, "s--", label="validation")
        if best_epoch is not None:
            axes.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.set_title(label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    if panels > len(SERIES):
        axes = figure.add_subplot(1, panels, panels)
        axes.plot(epochs, rates, "o-", color="tab:green", label="rate")
        if all(rate > 0 for rate in rates if not math.isnan(rate)):
            axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_ylabel("learning rate")
        axes.set_title("learning rate")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return figure


def value(number: Any) -> float:
    """A plottable float: missing scores become NaN (a gap in the line)."""
    return float(number) if isinstance(number, (int, float)) and not isinstance(number, bool) else math.nan


def plot_bundle(bundle: str | Path, out: str | Path) -> dict[str, Any]:
    """Draw a bundle's training history into an image file (PNG, SVG or PDF, by suffix)."""

    require_matplotlib()
    raw = read_bundle(bundle)
    history = raw.meta.get("history")
    if not isinstance(history, list) or not history:
        raise CnntoolError(
            f"{bundle}: has no training history to plot (it was not written by `cnntool train`)"
        )
    if not all(isinstance(record, dict) and isinstance(record.get("epoch"), int) for record in history):
        raise CnntoolError(f"{bundle}: the training history in its meta is malformed")
    out = Path(out)
    if not out.parent.is_dir():
        raise CnntoolError(f"cannot write {out}: folder {out.parent} does not exist")
    name = raw.spec.get("name", "network") if isinstance(raw.spec, dict) else "network"
    dataset = raw.meta.get("dataset", {}).get("name") if isinstance(raw.meta.get("dataset"), dict) else None
    best = raw.meta.get("best_epoch")
    figure = history_figure(
        history,
        title=f"{name} on {dataset}" if dataset else str(name),
        best_epoch=best if isinstance(best, int) and not isinstance(best, bool) else None,
    )
    try:
        figure.savefig(out, dpi=100)
    except (OSError, ValueError) as exc:
        raise CnntoolError(f"cannot write {out}: {exc}") from None
    return {"plot": str(out), "bundle": str(bundle), "epochs": len(history)}
