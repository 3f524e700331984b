"""`cnntool sweep` on a real local Ray cluster: trials, their bundles, the leaderboard, the
best bundle, failed trials, resuming, and a search space refused before anything starts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cnntool
from cnntool.cli import app

ray = pytest.importorskip("ray")
runner = CliRunner()
CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
SPACE = {"lr": {"loguniform": [0.003, 0.05]}, "layers.0.filters": {"choice": [4, 8]}}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster of 2 CPUs for the module, always shut down."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_space(folder, space):
    path = folder / "space.json"
    path.write_text(json.dumps(space))
    return path


def sweep_args(spec, space, out_dir, trials=4, *more):
    return ["sweep", spec, "--data", "mnist-sample", "--space", space, "--trials", trials, "--epochs", "1",
            "--out-dir", out_dir, "--seed", "3", *more]  # fmt: skip


def test_four_trials_over_a_learning_rate_and_a_width(seed_spec_path, tmp_path):
    out_dir = tmp_path / "sweep"
    result = invoke(*sweep_args(seed_spec_path, write_space(tmp_path, SPACE), out_dir), "--json")
    assert result.exit_code == 0, result.output
    board = json.loads(result.stdout)
    trials = board["trials"]
    assert len(trials) == 4 and len({t["id"] for t in trials}) == 4
    scores = [t["val_accuracy"] for t in trials]
    assert scores == sorted(scores, reverse=True)
    for trial in trials:
        assert trial["status"] == "finished" and trial["epochs"] == 1 and trial["error"] is None
        assert set(trial["config"]) == {"lr", "layers.0.filters"}
        assert 0.003 <= trial["config"]["lr"] <= 0.05 and trial["config"]["layers.0.filters"] in (4, 8)
        bundle = cnntool.load_bundle(trial["bundle"])
        assert Path(trial["bundle"]).parent == out_dir / "trials"
        assert bundle.meta["sweep"]["config"] == trial["config"]
        assert bundle.meta["sweep"]["seed"] == 3 and bundle.meta["seed"] == 3
        assert bundle.meta["training"]["lr"] == trial["config"]["lr"]
        assert bundle.spec["layers"][0]["filters"] == trial["config"]["layers.0.filters"]
        assert bundle.meta["history"][-1]["val_accuracy"] == trial["val_accuracy"]
        assert bundle.meta["resume"]["status"] == "finished" and bundle.meta["test"]["examples"] == 1000
    assert len({t["config"]["lr"] for t in trials}) == 4
    assert board["best"]["id"] == trials[0]["id"]
    best = cnntool.load_bundle(out_dir / "best.cnnb")
    top = cnntool.load_bundle(trials[0]["bundle"])
    assert best.digest == top.digest and best.spec == top.spec
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(best.network.predict_proba(x), top.network.predict_proba(x))
    assert "trial" in result.stderr  # progress goes to stderr, never into the JSON


def test_a_failed_trial_is_listed_with_its_error_and_the_others_finish(seed_spec_path, tmp_path):
    # A 32x32 input passes the spec's checks but not the 28x28 data: those trials fail in Tune.
    space = write_space(tmp_path, {"input_shape.1": {"choice": [28, 32]}, "lr": {"uniform": [0.01, 0.02]}})
    result = invoke(*sweep_args(seed_spec_path, space, tmp_path / "sweep", 4, "--scheduler", "asha"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["rank", "trial", "status", "epochs", "val_accuracy", "input_shape.1", "lr"]
    rows = [line.split() for line in lines[1:5]]
    failed = [row for row in rows if row[2] == "error"]
    assert failed and len(failed) < 4
    assert all(row[5] == "32" for row in failed) and all(row[5] == "28" for row in rows if row[2] != "error")
    assert rows[-1][2] == "error"
    for row in failed:
        assert f"trial {row[1]} failed: the spec's input_shape [1, 32, 28] does not match" in result.stdout
    assert "best: trial " + rows[0][1] in result.stdout


def test_asha_stops_poor_trials_early_and_keeps_their_bundles(seed_spec_path, tmp_path):
    args = sweep_args(
        seed_spec_path, write_space(tmp_path, SPACE), tmp_path / "sweep", 6, "--scheduler", "asha"
    )
    args[args.index("--epochs") + 1] = "4"
    args[args.index("--seed") + 1] = "0"
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    trials = json.loads(result.stdout)["trials"]
    stopped = [t for t in trials if t["status"] == "stopped"]
    assert stopped and all(t["status"] == "finished" and t["epochs"] == 4 for t in trials if t not in stopped)
    for trial in stopped:
        bundle = cnntool.load_bundle(trial["bundle"])
        assert len(bundle.meta["history"]) == trial["epochs"] < 4
        assert bundle.meta["sweep"]["config"] == trial["config"]


def test_an_interrupted_sweep_resumes(seed_spec_path, tmp_path, cluster):
    out_dir = tmp_path / "sweep"
    args = sweep_args(seed_spec_path, write_space(tmp_path, SPACE), out_dir, 4, "--max-concurrent", "1")
    args[args.index("--epochs") + 1] = "3"
    env = {**os.environ, "RAY_ADDRESS": cluster}
    first = subprocess.Popen([CNNTOOL, *map(str, args), "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while (
        not list((out_dir / "trials").glob("*.cnnb")) and time.monotonic() < deadline and first.poll() is None
    ):
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stdout + stderr
    assert f"continue the sweep with cnntool sweep --resume {out_dir}" in stderr
    interrupted = json.loads(stdout)
    assert interrupted["interrupted"]
    assert sum(t["status"] == "finished" for t in interrupted["trials"]) < 4, stdout
    done = {
        path.stem: len(cnntool.load_bundle(path).meta["history"])
        for path in (out_dir / "trials").glob("*.cnnb")
    }

    resumed = invoke("sweep", "--resume", out_dir, "--json")
    assert resumed.exit_code == 0, resumed.output
    board = json.loads(resumed.stdout)
    assert len(board["trials"]) == 4 and not board["interrupted"]
    assert all(t["status"] == "finished" and t["epochs"] == 3 for t in board["trials"])
    for trial_id, epochs in done.items():  # continued from its bundle, not trained again
        # The last epoch it holds may be reported once more (the interrupt can fall between
        # the bundle's write and Tune's record of the report); none before it is trained again.
        for epoch in range(1, epochs):
            assert f"trial {trial_id} epoch {epoch}:" not in resumed.stderr, (done, stdout, resumed.stderr)
        assert len(cnntool.load_bundle(out_dir / "trials" / f"{trial_id}.cnnb").meta["history"]) == 3
    assert (out_dir / "best.cnnb").is_file()


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"lrr": {"uniform": [0.01, 0.1]}}, "unknown training option 'lrr'; did you mean 'lr'?"),
        ({"layers.9.filters": {"choice": [4]}}, "'layers.9.filters' is not a path in the spec"),
        ({"layers.0.filterz": {"choice": [4]}}, "'layers.0.filterz' is not a path in the spec"),
        ({"lr": {"uniform": [0.1, 0.01]}}, "uniform needs low < high"),
        ({"lr": {"loguniform": [0, 0.1]}}, "loguniform needs 0 < low"),
        ({"lr": {"normal": [0, 1]}}, "search space: 'lr': expected one of"),
        ({"layers.0.filters": {"choice": [8, 0]}}, "'layers.0.filters' = 0:"),
        ({"optimizer": {"choice": ["sgd", "rmsprop"]}}, "'optimizer' = \"rmsprop\""),
        ([], "search space: expected a JSON object"),
    ],
)
def test_a_bad_search_space_is_refused_before_anything_starts(seed_spec_path, tmp_path, space, expected):
    out_dir = tmp_path / "sweep"
    result = invoke(*sweep_args(seed_spec_path, write_space(tmp_path, space), out_dir))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not out_dir.exists()
