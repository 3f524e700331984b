"""Checkpoints and resuming: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends
with the same bundle, bit for bit, as a run that was never stopped; what may and may not
change on resuming."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnntool
from cnntool.bundle import read_bundle
from cnntool.errors import CnntoolError
from cnntool.training.run import TrainingInterrupted, TrainingRun

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
EPOCHS = 8

# Everything that carries state from step to step: batch statistics, dropout masks, Adam's
# moments, a warm-up and cosine schedule, early stopping's best weights.
SPEC = {
    "name": "resumable",
    "input_shape": [1, 28, 28],
    "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "use_bias": False},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "dropout", "rate": 0.2},
        {"type": "flatten"},
        {"type": "dense", "units": 64},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 10},
    ],
    "training": {
        "epochs": EPOCHS,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 0.003,
        "lr_schedule": "cosine",
        "warmup_epochs": 1,
        "early_stopping": 100,
        "seed": 11,
        "val_split": 0.2,
    },
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The spec, and the bundled sample with a smaller test split as an .npz."""
    folder = tmp_path_factory.mktemp("resume")
    sample = cnntool.load_dataset("mnist-sample")
    data = folder / "digits.npz"
    np.savez(
        data, x_train=sample.x_train, y_train=sample.y_train, x_test=sample.x_test[:200],
        y_test=sample.y_test[:200],
    )  # fmt: skip
    spec = folder / "spec.json"
    spec.write_text(json.dumps(SPEC))
    return folder, spec, data


def train(*args, env=None):
    return subprocess.run(
        [CNNTOOL, "train", *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.fixture(scope="module")
def uninterrupted(files):
    folder, spec, data = files
    out = folder / "full.cnnb"
    result = train(spec, "--data", data, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def tensors(section):
    if isinstance(section, np.ndarray):
        return section
    return {key: tensors(value) for key, value in section.items() if isinstance(value, (dict, np.ndarray))}


def assert_same_run(path, expected_path):
    """Same weights, state, optimizer (moments, step, training slots) and history."""
    ours, theirs = read_bundle(path), read_bundle(expected_path)
    assert ours.digest == theirs.digest
    flat_ours, flat_theirs = flatten(tensors(ours.optimizer)), flatten(tensors(theirs.optimizer))
    assert flat_ours.keys() == flat_theirs.keys()
    for key, value in flat_theirs.items():
        np.testing.assert_array_equal(flat_ours[key], value, err_msg=key)
    assert ours.optimizer["steps"] == theirs.optimizer["steps"]

    def scores(bundle):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in bundle.meta["history"]]

    assert scores(ours) == scores(theirs)
    assert ours.meta["test"] == theirs.meta["test"]
    resume = {k: v for k, v in ours.meta["resume"].items() if k != "seconds"}
    assert resume == {k: v for k, v in theirs.meta["resume"].items() if k != "seconds"}


def flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def test_uninterrupted_run_records_its_state(uninterrupted):
    path, report = uninterrupted
    assert report["status"] == "finished" and report["epochs"] == EPOCHS
    bundle = read_bundle(path)
    resume = bundle.meta["resume"]
    assert resume["status"] == "finished" and resume["epoch"] == EPOCHS and resume["batch"] == 0
    assert resume["random_step"] == bundle.optimizer["steps"] == EPOCHS * 100  # 3,200 images, batch 32
    # Early stopping kept the best epoch's weights; the last epoch's are stored beside them.
    best = report["best_epoch"]
    assert bundle.meta["best_epoch"] == best
    assert {"current_params", "current_state", "exp_avg", "exp_avg_sq"} == set(bundle.optimizer["slots"])
    losses = [record["val_loss"] for record in report["history"]]
    assert losses[best - 1] == min(losses)
    # The warm-up's last step reaches lr; cosine then decays it from there.
    rates = [record["lr"] for record in report["history"]]
    assert rates[0] == pytest.approx(0.003)
    assert rates[1:] == pytest.approx([0.003 * (1 + np.cos(np.pi * k / (EPOCHS - 1))) / 2 for k in range(7)])


def test_same_seed_and_threads_give_the_same_bundle(files, uninterrupted):
    folder, spec, data = files
    again = train(spec, "--data", data, "--out", folder / "again.cnnb", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["digest"] == uninterrupted[1]["digest"]
    other = train(
        spec, "--data", data, "--out", folder / "other.cnnb", "--seed", "12", "--epochs", "1", "--json"
    )
    assert json.loads(other.stdout)["digest"] != uninterrupted[1]["digest"]


def test_killed_run_resumes_to_the_same_weights(files, uninterrupted):
    folder, spec, data = files
    out = folder / "killed.cnnb"
    process = subprocess.Popen(
        [CNNTOOL, "train", spec, "--data", data, "--out", out, "--checkpoint-every", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not out.exists() and process.poll() is None:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = read_bundle(out).meta["resume"]
    assert saved["status"] == "running" and saved["batch"] == 0
    assert 1 <= saved["epoch"] < EPOCHS, "the run ended before it could be killed"
    resumed = train("--resume", out, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} after epoch {saved['epoch']}, up to epoch {EPOCHS}" in resumed.stderr
    assert_same_run(out, uninterrupted[0])


def test_ctrl_c_saves_a_checkpoint_and_resuming_it_gives_the_same_weights(files, uninterrupted):
    folder, spec, data = files
    out = folder / "interrupted.cnnb"
    log = folder / "interrupted.jsonl"
    process = subprocess.Popen(
        [CNNTOOL, "train", spec, "--data", data, "--out", out, "--log", log],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while (not log.exists() or not log.read_text()) and process.poll() is None:
            time.sleep(0.002)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    saved = read_bundle(out).meta["resume"]
    assert saved["status"] == "interrupted" and saved["epoch"] < EPOCHS
    where = f", batch {saved['batch']} of 100" if saved["batch"] else ""
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"interrupted: checkpoint saved to {out} after epoch {saved['epoch']}{where}; "
        f"continue with: cnntool train --resume {out}"
    )
    assert "Traceback" not in stderr
    resumed = train("--resume", out, "--log", log, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted[0])
    # The log reads like the uninterrupted run's: one line per epoch.
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    assert [line["loss"] for line in lines] == [r["loss"] for r in uninterrupted[1]["history"]]


def test_resuming_in_the_middle_of_an_epoch(files, uninterrupted):
    """Stopped after batch 7 of epoch 3 (what Ctrl-C does), then resumed, in-process."""
    folder, spec, data = files
    out = folder / "middle.cnnb"
    run = TrainingRun.prepare(spec, out, {"data": str(data)})

    def stop_in_epoch_3(done, total):
        if run.trainer.state.epoch == 2 and done == 7:
            run.trainer.request_stop()

    with pytest.raises(TrainingInterrupted) as stopped:
        run.run(on_batch=stop_in_epoch_3)
    assert (stopped.value.epoch, stopped.value.batch, stopped.value.batches) == (2, 7, 100)
    saved = read_bundle(out).meta["resume"]
    assert (saved["epoch"], saved["batch"], saved["status"]) == (2, 7, "interrupted")
    assert saved["correct"] > 0 and saved["loss_sum"] > 0
    result = TrainingRun.resume(out, {}).run()
    assert result["digest"] == uninterrupted[1]["digest"]
    assert_same_run(out, uninterrupted[0])


def test_a_finished_run_extends_with_a_larger_total(files, tmp_path):
    _, spec, data = files
    short, extended = tmp_path / "short.cnnb", tmp_path / "extended.cnnb"
    options = ["--data", data, "--lr-schedule", "constant", "--warmup-epochs", "0"]
    assert train(spec, *options, "--epochs", "2", "--out", short).returncode == 0
    resumed = train("--resume", short, "--epochs", "4", "--out", extended, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in json.loads(resumed.stdout)["history"]] == [1, 2, 3, 4]
    straight = train(spec, *options, "--epochs", "4", "--out", tmp_path / "straight.cnnb", "--json")
    assert json.loads(straight.stdout)["digest"] == json.loads(resumed.stdout)["digest"]
    # The short run's bundle is left as it was.
    assert read_bundle(short).meta["resume"]["epoch"] == 2


def test_what_cannot_be_resumed(files, uninterrupted, tmp_path):
    data = files[2]
    full = uninterrupted[0]
    with pytest.raises(
        CnntoolError, match=rf"{re.escape(str(full))}: already trained 8 of 8 epochs; pass --epochs"
    ):
        TrainingRun.resume(full, {})
    message = (
        r"cannot change --batch-size \(stored 32, given 64\) when resuming "
        rf"{re.escape(str(full))}: the run would no longer be the one that was saved"
    )
    with pytest.raises(CnntoolError, match=message):
        TrainingRun.resume(full, {"lr": 0.1, "batch_size": 64, "seed": 11, "epochs": 9})
    plain = tmp_path / "plain.cnnb"
    cnntool.save_bundle(cnntool.Network.from_spec(SPEC), plain)
    with pytest.raises(CnntoolError, match=rf"{re.escape(str(plain))}: holds no training state to resume"):
        TrainingRun.resume(plain, {"epochs": 9})
    other = tmp_path / "other.npz"
    sample = cnntool.load_dataset("mnist-sample")
    np.savez(other, x_train=sample.x_train[:500], y_train=sample.y_train[:500], x_test=sample.x_test[:9],
             y_test=sample.y_test[:9])  # fmt: skip
    expected = (
        f"{full} was trained on '{data}' but --data '{other}' has other files; resume with the same data"
    )
    with pytest.raises(CnntoolError, match=re.escape(expected)):
        TrainingRun.resume(full, {"epochs": 9, "data": str(other)})


def test_resume_errors_on_the_command_line(files, uninterrupted):
    _, spec, data = files
    full = uninterrupted[0]
    # The run's own spec is accepted with --resume (tests/test_resume_spec.py); this run is done.
    result = train(spec, "--resume", full)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {full}: already trained {EPOCHS} of {EPOCHS} epochs; pass --epochs with a total above "
        f"{EPOCHS} to train further\n"
    )
    result = train("--data", data)
    assert result.returncode == 1
    assert (
        result.stderr
        == "error: missing SPEC: give a network spec file, or --resume BUNDLE to continue a run\n"
    )
    result = train(spec, "--data", data)
    assert result.returncode == 1
    assert result.stderr == "error: missing --out: give the bundle file to write, such as --out model.cnnb\n"


def test_a_second_ctrl_c_aborts_at_once(files, tmp_path):
    """The first Ctrl-C only asks the loop to stop at the next step; a second one aborts."""
    _, spec, data = files
    code = (
        "import os, signal, sys\n"
        "from cnntool.training.run import TrainingRun, TrainingInterrupted\n"
        f"run = TrainingRun.prepare({str(spec)!r}, {str(tmp_path / 'x.cnnb')!r}, {{'data': {str(data)!r}}})\n"
        "def twice(done, total):\n"
        "    if done == 3:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "try:\n"
        "    run.run(on_batch=twice)\n"
        "except TrainingInterrupted:\n"
        "    sys.exit('saved a checkpoint')\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit('aborted')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ})  # fmt: skip
    assert result.stderr.strip().splitlines()[-1] == "aborted"
