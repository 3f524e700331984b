"""Hyperparameter sweeps on Ray Tune: many trainings of one spec, each with values drawn from a
search space, and a leaderboard of how they did.

A search space is a JSON object mapping training options (`lr`, `batch_size`, `optimizer`,
`weight_decay`, ...) and dotted spec paths (`layers.0.filters`) to one distribution:
`{"choice": [...]}`, `{"uniform": [a, b]}`, `{"loguniform": [a, b]}` or `{"randint": [a, b]}`
(b excluded, as in Ray Tune). Everything is checked before Ray starts: the distributions, that
every path exists in the spec, and that the spec and options are valid at the ends of every
range and for every choice.

Each trial is cnntool's own `TrainingRun` inside Ray Tune. After every epoch it writes its
bundle (resumable) to `DIR/trials/<trial id>.cnnb` and reports the epoch's metrics, so the ASHA
scheduler can stop a poor trial early and a stopped trial still leaves its model. A trial that
fails is tried once more (a worker that died continues from its bundle); one that fails again
writes its error beside it (`<trial id>.error`) and the sweep goes on. At the end every
trial bundle gets `meta.sweep` (trial id, config, seed, metric), the best is copied to
`DIR/best.cnnb`, and `DIR/sweep.json` keeps the settings, so `--resume DIR` continues an
interrupted sweep: Tune restarts the unfinished trials, which resume from their bundles.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cnntool.bundle import load_bundle, save_bundle
from cnntool.errors import CnntoolError, SpecError
from cnntool.inference.run import ray_cluster
from cnntool.model.spec import TrainingConfig, validate_spec
from cnntool.model.spec_fields import MONITORS
from cnntool.system.files import atomic_write
from cnntool.training.run import TrainingRun, merge_options

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("fifo", "asha")
# Options a trial may not draw: the sweep sets them, or they are files.
NOT_SWEPT = ("data", "epochs", "log", "checkpoint_every", "seed")
SETTINGS_FILE = "sweep.json"
TUNE_FOLDER = "tune"


@dataclass
class SweepSettings:
    """Everything that defines a sweep; saved as DIR/sweep.json for --resume."""

    spec: dict
    data: str
    space: dict
    trials: int
    epochs: int
    metric: str = "val_accuracy"
    scheduler: str = "fifo"
    max_concurrent: int | None = None
    seed: int = 0

    @property
    def mode(self) -> str:
        return "min" if self.metric.endswith("loss") else "max"


# --- the search space -------------------------------------------------------------------


def training_keys() -> list[str]:

    return [key for key in TrainingConfig.model_fields if key not in NOT_SWEPT]


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnntoolError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CnntoolError(f"{path}: cannot read the {what} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CnntoolError(f"{path}: the {what} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def check_distribution(key: str, value: Any) -> list[Any]:
    """The values that stand for a distribution when checking it: every choice, or the ends
    of a range."""
    where = f"search space: {key!r}"
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise SpecError(
            f"{where}: expected one of {', '.join(f'{{{name!r}: ...}}' for name in DISTRIBUTIONS)}; "
            f"received {json.dumps(value)}"
        )
    (kind, args), numbers = next(iter(value.items())), (int, float)
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(f"{where}: choice needs a non-empty list of values; received {json.dumps(args)}")
        return args
    if (
        not isinstance(args, list)
        or len(args) != 2
        or not all(isinstance(a, numbers) and not isinstance(a, bool) for a in args)
    ):
        raise SpecError(f"{where}: {kind} needs [low, high], two numbers; received {json.dumps(args)}")
    low, high = args
    if not low < high:
        raise SpecError(f"{where}: {kind} needs low < high; received [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{where}: loguniform needs 0 < low; received [{low}, {high}]")
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            raise SpecError(f"{where}: randint needs two integers; received [{low}, {high}]")
        return [low, high - 1]
    return [low, high]


def path_exists(spec: dict, dotted: str) -> bool:
    node: Any = spec
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def set_path(spec: dict, dotted: str, value: Any) -> None:
    """Set a dotted path (`layers.0.filters`) in a spec, adding the last key if it is absent."""
    *parents, last = dotted.split(".")
    node: Any = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_config(spec: dict, config: dict) -> tuple[dict, dict]:
    """The spec with the config's dotted paths set, and the config's training options."""
    spec = json.loads(json.dumps(spec))
    options = {}
    for key, value in config.items():
        if "." in key:
            set_path(spec, key, value)
        else:
            options[key] = value
    return spec, options


def check_space(space: Any, spec: dict) -> None:
    """Refuse a search space that is malformed, names an unknown option or a path the spec
    lacks, or gives values the spec or the training options refuse."""

    if not isinstance(space, dict) or not space:
        raise SpecError('search space: expected a JSON object such as {"lr": {"loguniform": [0.001, 0.1]}}')
    full = validate_spec(spec).model_dump(mode="json", exclude_none=True)
    keys = training_keys()
    for key, value in space.items():
        candidates = check_distribution(key, value)
        if "." in key:
            if not path_exists(full, key):
                raise SpecError(
                    f"search space: {key!r} is not a path in the spec; paths look like layers.0.filters "
                    f"(the spec has {len(full['layers'])} layers, numbered from 0)"
                )
        elif key not in keys:
            near = difflib.get_close_matches(key, keys, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise SpecError(
                f"search space: unknown training option {key!r}; {hint}options: {', '.join(keys)}, "
                "or a dotted spec path such as layers.0.filters"
            )
        for candidate in candidates:
            swept, options = apply_config(spec, {key: candidate})
            try:
                validate_spec(swept)
                merge_options(validate_spec(spec).training, options, TrainingConfig)
            except SpecError as exc:
                raise SpecError(f"search space: {key!r} = {json.dumps(candidate)}: {exc}") from None


def tune_space(space: dict) -> dict:
    # the Ray extra is optional: imported where it is used
    from ray import tune

    result = {}
    for key, value in space.items():
        [(kind, args)] = value.items()
        result[key] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
    return result


# --- one trial --------------------------------------------------------------------------


def run_trial(config: dict, settings: dict, trials_dir: str, threads: int) -> None:
    """A Ray Tune trial: train with `config`, write the bundle and report after every epoch;
    continue from the bundle when Tune restarts the trial (a resumed sweep)."""
    # the Ray extra is optional: imported where it is used
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    out = Path(trials_dir) / f"{trial_id}.cnnb"
    out.with_suffix(".error").unlink(missing_ok=True)
    try:
        spec, options = apply_config(settings["spec"], config)
        overrides = {
            **options,
            "data": settings["data"],
            "epochs": settings["epochs"],
            "seed": settings["seed"],
        }
        saved = saved_run(out)
        if saved is not None and saved["epoch"] >= settings["epochs"]:
            # Trained in full before the sweep was interrupted: report where it ended.
            tune.report({key: value for key, value in saved["last"].items() if value is not None})
            return
        if saved is not None and saved["status"] in ("running", "interrupted"):
            run = TrainingRun.resume(out, {"epochs": settings["epochs"]}, threads=threads)
        else:
            run = TrainingRun.prepare(spec, out, overrides, threads=threads)

        def report(record: dict) -> None:
            tune.report({key: value for key, value in record.items() if value is not None})

        def on_epoch(record: dict) -> None:
            # The last epoch is reported once the final bundle is written: Tune may end the
            # trial at any report, and the final write would then be lost.
            if record["epoch"] >= settings["epochs"]:
                return
            slots = run.trainer.publish()
            try:
                run.write("running", slots, None)
            finally:
                run.trainer.unpublish(slots)
            report(record)

        result = run.run(on_epoch=on_epoch)
        if result["epochs"] >= settings["epochs"]:
            report(result["history"][-1])
    except Exception as exc:
        out.with_suffix(".error").write_text(str(exc) or type(exc).__name__, encoding="utf-8")
        raise


def saved_run(path: Path) -> dict | None:
    """Where the run in a trial bundle stands (`status`, `epoch`, the `last` epoch's record),
    or None without a readable bundle."""

    if not path.is_file():
        return None
    try:
        meta = load_bundle(path).meta
    except CnntoolError:
        return None
    resume, history = meta.get("resume") or {}, meta.get("history") or []
    if not isinstance(resume.get("epoch"), int) or not history:
        return None
    return {"status": resume.get("status"), "epoch": resume["epoch"], "last": history[-1]}


# --- the sweep --------------------------------------------------------------------------


def prepare(
    spec_path: Path,
    data: str,
    space_path: Path,
    out_dir: Path,
    *,
    trials: int,
    epochs: int,
    metric: str,
    scheduler: str,
    max_concurrent: int | None,
    seed: int,
) -> SweepSettings:
    """Check everything before Ray starts, and write DIR/sweep.json."""

    if metric not in MONITORS:
        raise CnntoolError(f"--metric must be one of {', '.join(MONITORS)}; received {metric!r}")
    if scheduler not in SCHEDULERS:
        raise CnntoolError(f"--scheduler must be fifo or asha; received {scheduler!r}")
    if (out_dir / SETTINGS_FILE).exists():
        raise CnntoolError(
            f"{out_dir} already holds a sweep; continue it with --resume {out_dir}, or pass another --out-dir"
        )
    if not out_dir.parent.is_dir():
        raise CnntoolError(f"cannot write {out_dir}: folder {out_dir.parent} does not exist")
    validate_spec(spec_path)
    spec = read_json(spec_path, "spec")
    space = read_json(space_path, "search space")
    check_space(space, spec)
    if Path(data).exists():
        data = str(Path(data).resolve())
    settings = SweepSettings(spec, data, space, trials, epochs, metric, scheduler, max_concurrent, seed)
    out_dir.mkdir(exist_ok=True)
    (out_dir / "trials").mkdir(exist_ok=True)
    # The data, and its fit to the spec, with the first value of every distribution.
    first = {key: check_distribution(key, value)[0] for key, value in space.items()}
    swept, options = apply_config(spec, first)
    run = TrainingRun.prepare(
        swept, out_dir / "trials" / "check.cnnb", {**options, "data": data, "epochs": epochs, "seed": seed}
    )
    if metric.startswith("val_") and not len(run.x_val):
        raise CnntoolError(f"--metric {metric} needs a validation split; the run has val_split 0")
    (out_dir / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2), encoding="utf-8")
    return settings


def load_settings(out_dir: Path) -> SweepSettings:
    path = out_dir / SETTINGS_FILE
    if not path.is_file() or not (out_dir / TUNE_FOLDER).is_dir():
        raise CnntoolError(
            f"{out_dir}: holds no sweep to resume (no {SETTINGS_FILE} and {TUNE_FOLDER}/ there)"
        )
    try:
        return SweepSettings(**read_json(path, "sweep settings"))
    except TypeError as exc:
        raise CnntoolError(f"{path}: malformed sweep settings ({exc})") from None


def run_sweep(
    out_dir: Path, settings: SweepSettings, *, address: str | None, resume: bool, on_event: Any
) -> dict:
    """Run (or resume) the sweep on Ray Tune; return the leaderboard."""

    out_dir = out_dir.resolve()
    started = time.perf_counter()
    # Tune's own console output (a settings box, tables) would mix with the leaderboard and
    # --json on stdout; with the classic reporter, verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with ray_cluster(address) as ray:
        # the Ray extra is optional: imported where it is used
        from ray import tune

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        concurrent = min(settings.max_concurrent or cpus, cpus, settings.trials)
        threads = max(1, cpus // concurrent)
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial, settings=asdict(settings), trials_dir=str(out_dir / "trials"), threads=threads
            ),
            {"cpu": threads},
        )
        if resume:
            tuner = tune.Tuner.restore(str(out_dir / TUNE_FOLDER), trainable, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(settings.space),
                tune_config=tune.TuneConfig(
                    metric=settings.metric,
                    mode=settings.mode,
                    num_samples=settings.trials,
                    max_concurrent_trials=concurrent,
                    scheduler=make_scheduler(settings),
                    search_alg=tune.search.BasicVariantGenerator(random_state=settings.seed),
                    trial_dirname_creator=lambda trial: trial.trial_id,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_FOLDER,
                    storage_path=str(out_dir),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=1),
                    callbacks=[report_callback(settings.metric, on_event)],
                ),
            )
        results = tuner.fit()
    board = leaderboard(out_dir, settings, results)
    board["seconds"] = time.perf_counter() - started
    return board


def make_scheduler(settings: SweepSettings) -> Any:
    # the Ray extra is optional: imported where it is used
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=settings.epochs, grace_period=1, reduction_factor=2)
    return FIFOScheduler()


def report_callback(metric: str, on_event: Any) -> Any:
    """A Tune callback telling `on_event` one line per trial epoch, failure and end."""
    # the Ray extra is optional: imported where it is used
    from ray import tune

    class Report(tune.Callback):
        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            value = result.get(metric)
            shown = f"{metric} {value:.4f}" if isinstance(value, float) else ""
            on_event(f"trial {trial.trial_id} epoch {result.get('epoch')}: {shown}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            on_event(f"trial {trial.trial_id} failed")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            on_event(f"trial {trial.trial_id} done")

    return Report()


def leaderboard(out_dir: Path, settings: SweepSettings, results: Any) -> dict:
    """Every trial, best first (failed ones last, with their error); meta.sweep written into
    each trial bundle and the best copied to DIR/best.cnnb."""

    # Tune's trial states (a ResultGrid holds them only privately): a trial neither
    # TERMINATED nor ERROR was cut short by an interruption.
    states = {trial.trial_id: trial.status for trial in results._experiment_analysis.trials}
    trials = []
    for result in results:
        trial_id = Path(result.path).name
        bundle = out_dir / "trials" / f"{trial_id}.cnnb"
        error_file = bundle.with_suffix(".error")
        metrics = result.metrics or {}
        entry: dict[str, Any] = {
            "id": trial_id,
            "config": dict(result.config or {}),
            "status": "finished",
            "epochs": metrics.get("epoch"),
            **{name: metrics.get(name) for name in MONITORS},
            "bundle": str(bundle) if bundle.is_file() else None,
            "error": None,
        }
        if result.error is not None or error_file.is_file():
            entry["status"] = "error"
            entry["error"] = (
                error_file.read_text(encoding="utf-8")
                if error_file.is_file()
                else str(result.error).strip().splitlines()[-1]
            )
        elif states.get(trial_id) != "TERMINATED" or entry["epochs"] is None:
            entry["status"] = "unfinished"
        elif (entry["epochs"] or 0) < settings.epochs:
            entry["status"] = "stopped"
        trials.append(entry)
    sign = 1 if settings.mode == "min" else -1

    def rank(entry: dict) -> tuple:
        value = entry[settings.metric]
        usable = entry["bundle"] is not None and entry["status"] in ("finished", "stopped")
        usable = usable and isinstance(value, (int, float))
        return (0, sign * value, entry["id"]) if usable and math.isfinite(value) else (1, 0.0, entry["id"])

    trials.sort(key=rank)
    for entry in trials:
        if entry["bundle"] is not None and entry["status"] in ("finished", "stopped"):
            record_trial(Path(entry["bundle"]), entry, settings)
    best = trials[0] if trials and rank(trials[0])[0] == 0 else None
    if best is not None:
        atomic_write(out_dir / "best.cnnb", Path(best["bundle"]).read_bytes())
    return {
        # Tune makes trials as slots free up, so an interrupted sweep may also lack some.
        "interrupted": len(trials) < settings.trials
        or any(entry["status"] == "unfinished" for entry in trials),
        "metric": settings.metric,
        "mode": settings.mode,
        "trials": trials,
        "best": best,
        "best_bundle": str(out_dir / "best.cnnb") if best is not None else None,
    }


def record_trial(path: Path, entry: dict, settings: SweepSettings) -> None:
    """Rewrite a trial bundle with `meta.sweep`: the trial, its config, the seed, the metric."""

    bundle = load_bundle(path)
    meta = dict(bundle.meta)
    meta["sweep"] = {
        "trial": entry["id"],
        "config": entry["config"],
        "seed": settings.seed,
        "metric": settings.metric,
        settings.metric: entry[settings.metric],
    }
    optimizer = SimpleNamespace(state_dict=lambda: bundle.optimizer) if bundle.optimizer else None
    save_bundle(bundle.network, path, meta=meta, optimizer=optimizer)
