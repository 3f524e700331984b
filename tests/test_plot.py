"""`cnntool plot`: the figure is the stored history, the PNG is a real image, and a missing
matplotlib or history is a one-line error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app

pytest.importorskip("matplotlib")
runner = CliRunner()

HISTORY = [
    {
        "epoch": 1,
        "loss": 1.2,
        "accuracy": 0.55,
        "val_loss": 0.9,
        "val_accuracy": 0.7,
        "lr": 0.01,
        "seconds": 1.0,
    },
    {
        "epoch": 2,
        "loss": 0.6,
        "accuracy": 0.8,
        "val_loss": 0.5,
        "val_accuracy": 0.85,
        "lr": 0.01,
        "seconds": 1.0,
    },
    {
        "epoch": 3,
        "loss": 0.4,
        "accuracy": 0.88,
        "val_loss": 0.45,
        "val_accuracy": 0.87,
        "lr": 0.01,
        "seconds": 1.0,
    },
    {
        "epoch": 4,
        "loss": 0.3,
        "accuracy": 0.91,
        "val_loss": 0.52,
        "val_accuracy": 0.86,
        "lr": 0.01,
        "seconds": 1.0,
    },
]
SPEC = {
    "name": "tiny",
    "input_shape": [1, 4, 4],
    "layers": [{"type": "flatten"}, {"type": "dense", "units": 3}],
}


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "tiny.cnnb"
    meta = {"history": HISTORY, "best_epoch": 3, "dataset": {"name": "toy"}}
    cnntool.save_bundle(cnntool.Network.from_spec(SPEC), path, meta=meta)
    return path


def lines_by_label(axes):
    return {line.get_label(): line for line in axes.get_lines()}


def test_figure_draws_the_history():
    from cnntool.training.plotting import history_figure

    figure = history_figure(HISTORY, title="tiny on toy", best_epoch=3)
    assert figure._suptitle.get_text() == "tiny on toy"
    for axes, key in zip(figure.axes[:2], ("loss", "accuracy"), strict=True):
        assert axes.get_title() == key and axes.get_xlabel() == "epoch"
        lines = lines_by_label(axes)
        assert set(lines) == {"training", "validation", "best epoch (3)"}
        np.testing.assert_array_equal(lines["training"].get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(lines["training"].get_ydata(), [r[key] for r in HISTORY])
        np.testing.assert_array_equal(lines["validation"].get_ydata(), [r[f"val_{key}"] for r in HISTORY])
        np.testing.assert_array_equal(lines["best epoch (3)"].get_xdata(), [3, 3])
        low, high = axes.get_ylim()
        assert low <= min(r[key] for r in HISTORY) and high >= max(r[key] for r in HISTORY)


def test_figure_without_validation_has_one_line_per_panel():
    from cnntool.training.plotting import history_figure

    plain = [{**r, "val_loss": None, "val_accuracy": None} for r in HISTORY]
    figure = history_figure(plain)
    assert [list(lines_by_label(axes)) for axes in figure.axes] == [["training"], ["training"], ["rate"]]


def test_figure_draws_the_learning_rate():
    from cnntool.training.plotting import history_figure

    history = [{**r, "lr": 0.1 / 10 ** (r["epoch"] // 3)} for r in HISTORY]
    axes = history_figure(history).axes[2]
    assert axes.get_title() == "learning rate" and axes.get_yscale() == "log"
    np.testing.assert_allclose(lines_by_label(axes)["rate"].get_ydata(), [0.1, 0.1, 0.01, 0.01])
    assert len(history_figure([{k: v for k, v in r.items() if k != "lr"} for r in HISTORY]).axes) == 2


def test_plot_command_writes_a_png_of_the_bundles_history(bundle, tmp_path):
    out = tmp_path / "history.png"
    result = runner.invoke(app, ["plot", str(bundle), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"plot": str(out), "bundle": str(bundle), "epochs": 4}
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1500, 400)  # loss, accuracy, learning rate
        pixels = np.asarray(image.convert("RGB"))
    # Lines in matplotlib's first two colours: training blue, validation orange.
    assert np.any(np.all(pixels == (31, 119, 180), axis=2))
    assert np.any(np.all(pixels == (255, 127, 14), axis=2))


def test_plot_errors(bundle, tmp_path):
    empty = tmp_path / "empty.cnnb"
    cnntool.save_bundle(cnntool.Network.from_spec(SPEC), empty)
    result = runner.invoke(app, ["plot", str(empty), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {empty}: has no training history to plot (it was not written by `cnntool train`)\n"
    )
    result = runner.invoke(app, ["plot", str(bundle), "-o", str(tmp_path / "no" / "x.png")])
    assert (
        result.stderr
        == f"error: cannot write {tmp_path / 'no' / 'x.png'}: folder {tmp_path / 'no'} does not exist\n"
    )


def test_missing_matplotlib_says_what_to_install(bundle, tmp_path):
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from cnntool.cli import main\n"
        f"sys.argv = ['cnntool', 'plot', {str(bundle)!r}, '-o', {str(tmp_path / 'x.png')!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        "error: plotting needs matplotlib, which is not installed: pip install 'cnntool[plot]'\n"
    )
    assert not (tmp_path / "x.png").exists()
