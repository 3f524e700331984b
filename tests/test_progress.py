"""Progress of `cnntool train` on a terminal: a bar per epoch with images per second and the
time left; plain lines otherwise (tests/test_cli.py checks those)."""

import io

from rich.console import Console

from cnntool.cli.output import EpochProgress


def test_the_bar_shows_images_per_second_and_time_left(monkeypatch):
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr("cnntool.cli.output.perf_counter", lambda: next(clock))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, color_system=None, width=120)
    with EpochProgress(2, batch_size=32, console=console) as progress:
        progress.on_compile(None)
        progress.on_compile(3.25)
        for done in range(1, 17):
            progress.on_batch(done, 20)
        progress.bar.refresh()
        text = screen.getvalue()
        progress.on_epoch({"epoch": 1, "loss": 0.5, "accuracy": 0.9, "seconds": 1.0})
    assert "compiling kernels (once per machine)... 3.2s" in text
    assert "epoch 1/2" in text and "16/20" in text
    assert "32 img/s" in text  # 15 batches of 32 images in 15 (fake) seconds
    assert "left" in text
    assert "epoch 1/2  loss 0.5000  accuracy 0.9000  1.00s" in screen.getvalue()
