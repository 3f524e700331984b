"""Training options: learning-rate schedules (against PyTorch's schedulers), warm-up, early
stopping and its best weights, the JSON-lines log, checkpoints, options in the spec's
training section and on the command line, and their errors."""

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app
from cnntool.errors import CnntoolError, SpecError
from cnntool.inference.inspect import sparkline
from cnntool.training.loop import EarlyStopping, fit
from cnntool.training.run import TrainingRun
from cnntool.training.schedules import Cosine, ReduceOnPlateau, Schedule, StepDecay

runner = CliRunner()
PREPROCESSING = {"pixel_scale": 1 / 255, "mean": 0.0, "std": 1.0}


@pytest.fixture(scope="module")
def sample():
    return cnntool.load_dataset("mnist-sample")


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    """1,000 training and 200 test images of the bundled sample, as an .npz."""
    path = tmp_path_factory.mktemp("train") / "small.npz"
    np.savez(path, x_train=sample.x_train[::4], y_train=sample.y_train[::4], x_test=sample.x_test[::5],
             y_test=sample.y_test[::5])  # fmt: skip
    return path


def spec_with(root, tmp_path, **training):
    spec = json.loads((root / "models/seed_cnn.json").read_text())
    spec["training"] = {"epochs": 3, "seed": 3, **training}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


# --- schedules against PyTorch's ----------------------------------------------------------


def torch_rates(torch, make, epochs, metrics=None):
    """The rate of each epoch under a PyTorch scheduler stepped once per epoch."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = make(optimizer)
    rates = []
    for epoch in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(metrics[epoch]) if metrics is not None else scheduler.step()
    return rates


def our_rates(schedule, epochs, metrics=None):
    rates = []
    for epoch in range(epochs):
        rates.append(schedule.rate(epoch))
        schedule.end_epoch(epoch, metrics[epoch] if metrics is not None else None)
    return rates


def test_step_and_cosine_match_pytorch():
    torch = pytest.importorskip("torch")
    lr_scheduler = torch.optim.lr_scheduler
    assert our_rates(StepDecay(0.1, step_size=3, gamma=0.5), 10) == pytest.approx(
        torch_rates(torch, lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 10), rel=1e-12
    )
    assert our_rates(Cosine(0.1, epochs=10, lr_min=0.001), 10) == pytest.approx(
        torch_rates(torch, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.001), 10), rel=1e-9
    )


@pytest.mark.parametrize(
    "mode,metrics",
    [
        ("min", [1.0, 0.9, 0.95, 0.93, 0.92, 0.9, 0.89991, 0.8999, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.4, 0.7]),
        ("max", [0.5, 0.6, 0.6, 0.59, 0.6, 0.61, 0.61, 0.6, 0.62, 0.62, 0.62, 0.62, 0.62, 0.62, 0.62, 0.62]),
    ],
)
def test_reduce_on_plateau_matches_pytorch(mode, metrics):
    torch = pytest.importorskip("torch")
    expected = torch_rates(
        torch,
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode=mode, factor=0.5, patience=1, min_lr=0.02
        ),
        len(metrics),
        metrics,
    )
    ours = our_rates(
        ReduceOnPlateau(0.1, gamma=0.5, patience=1, lr_min=0.02, mode=mode), len(metrics), metrics
    )
    assert ours == pytest.approx(expected, rel=1e-12)
    assert min(ours) == 0.02 and len(set(ours)) >= 3


def test_warmup_rises_linearly_per_step_as_pytorchs_linear_lr():
    torch = pytest.importorskip("torch")
    schedule = StepDecay(0.1, step_size=1, gamma=0.5, warmup_epochs=2)
    schedule.steps_per_epoch = 5
    ours = [schedule.rate(epoch, step) for epoch in range(2) for step in range(5)]
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / 10, total_iters=9)
    expected = []
    for _ in range(10):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        warmup.step()
    assert ours == pytest.approx(expected, rel=1e-12)
    # After the warm-up, the schedule proper counts its epochs from 0.
    assert [schedule.rate(epoch) for epoch in (2, 3, 4)] == pytest.approx([0.1, 0.05, 0.025])


def test_schedule_state_round_trips():
    first = ReduceOnPlateau(0.1, gamma=0.5, patience=0)
    for epoch, metric in enumerate([1.0, 2.0, 0.5, 3.0]):
        first.end_epoch(epoch, metric)
    second = ReduceOnPlateau(0.1, gamma=0.5, patience=0)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.state_dict() == first.state_dict() == {"current": 0.025, "best": 0.5, "bad_epochs": 0}
    assert Schedule(0.1).state_dict() == {}


# --- early stopping ------------------------------------------------------------------------


def test_early_stopping_follows_keras():
    stopper = EarlyStopping("val_loss", patience=2, min_delta=0.02)
    improved = [stopper.update({"epoch": e, "val_loss": v}) for e, v in enumerate([1.0, 0.8, 0.81, 0.79], 1)]
    assert improved == [True, True, False, False]
    assert (stopper.best, stopper.best_epoch, stopper.wait, stopper.stopped) == (0.8, 2, 2, True)
    rising = EarlyStopping("val_accuracy", patience=1)
    assert [rising.update({"epoch": e, "val_accuracy": v}) for e, v in enumerate([0.5, 0.7, 0.7], 1)] == [
        True,
        True,
        False,
    ]
    assert rising.stopped and rising.best_epoch == 2
    with pytest.raises(CnntoolError, match="early stopping monitors 'val_loss', which epoch 1 lacks"):
        EarlyStopping().update({"epoch": 1, "val_loss": None})


def test_fit_restores_the_best_epochs_weights(root, sample, rng):
    net = cnntool.Network.from_spec(root / "models/seed_cnn.json", seed=1)
    snapshots = []
    train = (sample.x_train[:600], sample.y_train[:600])
    history = fit(
        net, cnntool.optim.SGD(net, lr=0.05, momentum=0.9), train, epochs=5, batch_size=32,
        preprocessing=PREPROCESSING, seed=2,
        validation=(sample.x_train[600:800], sample.y_train[600:800]),
        # Nothing improves accuracy by 1: the first epoch stays the best and patience 2 ends epoch 3.
        early_stopping=EarlyStopping("val_accuracy", patience=2, min_delta=1.0),
        on_epoch=lambda record: snapshots.append(net.flat_params.copy()),
    )  # fmt: skip
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert not np.array_equal(snapshots[0], snapshots[2])
    np.testing.assert_array_equal(net.flat_params, snapshots[0])


def test_monitoring_validation_needs_validation_data(root, sample):
    net = cnntool.Network.from_spec(root / "models/seed_cnn.json")
    message = (
        "val_loss is monitored (early stopping or the plateau schedule) but there is no validation data; "
        "set a validation split (--val-split) or --monitor loss"
    )
    with pytest.raises(CnntoolError, match=re.escape(message)):
        fit(net, cnntool.optim.SGD(net), (sample.x_train[:64], sample.y_train[:64]), epochs=1, batch_size=32,
            preprocessing=PREPROCESSING, early_stopping=EarlyStopping())  # fmt: skip


# --- a run from the spec's training section and the command line --------------------------


def test_spec_options_run_and_command_line_overrides(root, tmp_path, data):
    log = tmp_path / "run.jsonl"
    out = tmp_path / "run.cnnb"
    spec = spec_with(
        root, tmp_path, data=str(data), lr=0.02, lr_schedule="step", lr_step_size=1, lr_gamma=0.5,
        early_stopping=5, monitor="val_accuracy", checkpoint_every=1, log=str(log),
    )  # fmt: skip
    seen = []

    def on_epoch(record):
        # The log is written, and flushed, as each epoch ends; the checkpoint of the epoch
        # before is on disk.
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert lines[-1] == record
        if record["epoch"] > 1:
            assert cnntool.bundle.read_bundle(out).meta["resume"]["epoch"] == record["epoch"] - 1
        seen.append(record["epoch"])

    run = TrainingRun.prepare(spec, out, {})
    result = run.run(on_epoch=on_epoch)
    assert seen == [1, 2, 3]
    assert [record["lr"] for record in result["history"]] == pytest.approx([0.02, 0.01, 0.005])
    bundle = cnntool.load_bundle(out)
    assert bundle.meta["training"]["lr_schedule"] == "step"
    assert bundle.spec["training"]["monitor"] == "val_accuracy"
    accuracies = [record["val_accuracy"] for record in result["history"]]
    assert bundle.meta["best_epoch"] == result["best_epoch"] == accuracies.index(max(accuracies)) + 1
    # The command line overrides the spec.
    cli = runner.invoke(
        app, ["train", str(spec), "--out", str(tmp_path / "cli.cnnb"), "--lr-gamma", "0.1", "--log",
              str(tmp_path / "cli.jsonl"), "--json"],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert [record["lr"] for record in json.loads(cli.stdout)["history"]] == pytest.approx(
        [0.02, 0.002, 0.0002]
    )
    # inspect draws the loss history as a sparkline.
    shown = runner.invoke(app, ["inspect", str(out)])
    assert f"history  loss {sparkline([record['loss'] for record in result['history']])}" in shown.stdout


@pytest.mark.parametrize(
    "options,message",
    [
        (
            ["--lr-schedule", "linear"],
            "invalid training options: lr_schedule: Input should be 'constant', 'step', 'cosine' or "
            "'plateau', received 'linear'",
        ),
        (
            ["--early-stopping", "3", "--val-split", "0"],
            "val_loss is monitored (early stopping or the plateau schedule) but there is no validation data; "
            "set a validation split (--val-split) or --monitor loss",
        ),
        (
            ["--lr-schedule", "plateau", "--monitor", "val_accuracy", "--val-split", "0"],
            "val_accuracy is monitored (early stopping or the plateau schedule) but there is no validation "
            "data; set a validation split (--val-split) or --monitor loss",
        ),
        (["--monitor", "val_acc"], "invalid training options: monitor: Input should be"),
        (
            ["--lr-gamma", "1.5"],
            "invalid training options: lr_gamma: Input should be less than 1, received 1.5",
        ),
        (
            ["--log", "{tmp}/missing/run.jsonl"],
            "cannot write the log {tmp}/missing/run.jsonl: folder {tmp}/missing does not exist",
        ),
    ],
)
def test_option_errors_are_one_line(options, message, root, tmp_path, data):
    spec = spec_with(root, tmp_path, data=str(data))
    options = [option.format(tmp=tmp_path) for option in options]
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "o.cnnb"), *options])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: " + message.format(tmp=tmp_path))
    assert len(result.stderr.strip().splitlines()) == 1


def test_training_config_documents_every_option():
    schema = cnntool.spec.TrainingConfig.model_json_schema()["properties"]
    for key in ("lr_schedule", "warmup_epochs", "monitor", "early_stopping", "checkpoint_every", "log"):
        assert schema[key].get("description"), key
    with pytest.raises(
        SpecError, match=r"training.warmup_epochs: Input should be greater than or equal to 0"
    ):
        cnntool.validate_spec({"input_shape": [1, 2, 2], "layers": [{"type": "flatten"}, {"type": "dense",
                               "units": 2}], "training": {"warmup_epochs": -1}})  # fmt: skip


def test_cosine_uses_the_epochs_after_warmup():
    from cnntool.model.spec import TrainingConfig
    from cnntool.training.schedules import make_schedule

    schedule = make_schedule(
        TrainingConfig(epochs=6, lr_schedule="cosine", warmup_epochs=2, lr_min=0.01), 0.1
    )
    schedule.steps_per_epoch = 4
    assert [schedule.rate(0, 0), schedule.rate(1, 3)] == pytest.approx([0.1 / 8, 0.1])
    assert [schedule.rate(epoch) for epoch in range(2, 6)] == pytest.approx(
        [0.01 + 0.09 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    )
