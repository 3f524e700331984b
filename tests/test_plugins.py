"""Layer plugins installed for real and used through the `cnntool` command.

The example plugin (plugins/cnntool-extras) and the deliberately broken distributions in
tests/plugins/ are each `pip install`ed into a folder of their own; `cnntool` then runs in a
subprocess with the chosen folders on PYTHONPATH, so entry points are discovered exactly as
for a user, and "uninstalled" is a run without the folder. The project's environment is
never changed.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cnntool
from cnntool.errors import BundleError

ROOT = Path(__file__).resolve().parent.parent
CNNTOOL = str(Path(sys.executable).with_name("cnntool"))
DIGITS = ROOT / "models" / "digits"
EXTRAS_SPEC = ROOT / "plugins" / "cnntool-extras" / "examples" / "extras_cnn.json"
EXTRAS = "cnntool-extras==0.1.0"
BROKEN = "cnntool-broken==0.2.0"
# cnntool's own layer types, as its pyproject.toml declares them in the entry-point group.
BUILTINS = set(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["cnntool.layers"]
)

BROKEN_WARNINGS = [
    f"layer type 'relu' is claimed by {BROKEN} (cnntool_broken.layers:FakeReLU) and by cnntool's "
    "built-in cnntool.layers.relu:ReLU; the built-in is kept. Rename the plugin's type.",
    f"failed to load layer type 'boom' from distribution {BROKEN}: RuntimeError: cnntool-broken needs a GPU",
    f"failed to load layer type 'missing_object' from distribution {BROKEN}: AttributeError: module "
    "'cnntool_broken.layers' has no attribute 'DoesNotExist'",
    f"failed to load layer type 'needs_dependency' from distribution {BROKEN}: ModuleNotFoundError: "
    "No module named 'cnntool_missing_dependency'",
    f"failed to load layer type 'no_schema' from distribution {BROKEN}: "
    "cnntool_broken.layers:NoSchema.Config has no JSON Schema: PydanticInvalidForJsonSchema: "
    "Cannot generate a JsonSchema for core_schema.CallableSchema",
    f"failed to load layer type 'not_a_layer' from distribution {BROKEN}: cnntool_broken.layers:NotALayer "
    "is not a subclass of cnntool.layers.Layer",
    f"failed to load layer type 'wrong_literal' from distribution {BROKEN}: "
    "cnntool_broken.layers:WrongLiteral.Config must declare type: Literal['wrong_literal'], "
    "found Literal['right_literal']",
]
CLASH = (
    "layer type 'swish' is claimed by two distributions: cnntool-clash-a==1.0.0 (cnntool_clash_a:Swish) "
    "and cnntool-clash-b==1.0.0 (cnntool_clash_b:Swish); uninstall one of them"
)


def installed_here(distribution):
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def sites(tmp_path_factory):
    """Folders holding installed plugin distributions: extras, broken (+ sloppy), clash (a + b),
    hurts."""
    base = tmp_path_factory.mktemp("plugins")
    groups = {
        "extras": [ROOT / "plugins" / "cnntool-extras"],
        "broken": [ROOT / "tests/plugins/cnntool-broken", ROOT / "tests/plugins/cnntool-sloppy"],
        "clash": [ROOT / "tests/plugins/cnntool-clash-a", ROOT / "tests/plugins/cnntool-clash-b"],
        "hurts": [ROOT / "tests/plugins/cnntool-hurts"],
    }
    folders = {}
    for name, sources in groups.items():
        # Built from copies, so setuptools' build/ and *.egg-info never land in the source tree.
        copies = [
            shutil.copytree(
                source, base / "src" / source.name, ignore=shutil.ignore_patterns("build", "*.egg-info")
            )
            for source in sources
        ]
        folders[name] = base / name
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        command += [
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(folders[name]),
            *map(str, copies),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    return folders


def cnntool_run(*args, sites=(), env=None, timeout=300):
    """Run the installed `cnntool` with `sites` (plugin folders) on PYTHONPATH."""
    environment = {key: value for key, value in os.environ.items() if key != "CNNTOOL_DISABLE_PLUGINS"}
    path = [*map(str, sites), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(path)
    environment.update(env or {})
    return subprocess.run(
        [CNNTOOL, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=environment
    )


def warnings_of(result):
    return [
        line.removeprefix("warning: ") for line in result.stderr.splitlines() if line.startswith("warning: ")
    ]


@pytest.fixture(scope="session")
def extras_bundle(sites, tmp_path_factory):
    """The example plugin's spec (leaky_relu, depthwise_conv2d, prelu) trained 2 epochs."""
    out = tmp_path_factory.mktemp("extras") / "extras.cnnb"
    result = cnntool_run(
        "train",
        EXTRAS_SPEC,
        "--data",
        "mnist-sample",
        "--epochs",
        "2",
        "--out",
        out,
        "--json",
        sites=[sites["extras"]],
    )
    assert result.returncode == 0, result.stderr
    assert warnings_of(result) == []
    return out, json.loads(result.stdout)


def test_layers_lists_plugin_types_with_their_provider(sites):
    result = cnntool_run("layers", "--json", sites=[sites["extras"]])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = {row["type"]: row for row in json.loads(result.stdout)}
    assert set(rows) == BUILTINS | {"leaky_relu", "prelu", "depthwise_conv2d"}
    assert rows["leaky_relu"] == {
        "type": "leaky_relu",
        "distribution": "cnntool-extras",
        "version": "0.1.0",
        "provider": EXTRAS,
        "object": "cnntool_extras.leaky_relu:LeakyReLU",
        "builtin": False,
        "status": "ok",
        "error": None,
    }
    assert rows["prelu"]["provider"] == rows["depthwise_conv2d"]["provider"] == EXTRAS
    assert rows["relu"]["provider"] == f"cnntool=={cnntool.__version__}" and rows["relu"]["builtin"]
    schema = json.loads(cnntool_run("schema", sites=[sites["extras"]]).stdout)
    mapping = schema["properties"]["layers"]["items"]["discriminator"]["mapping"]
    assert {"leaky_relu", "prelu", "depthwise_conv2d"} <= set(mapping)
    leaky = schema["$defs"]["LeakyReLUConfig"]["properties"]["negative_slope"]
    assert leaky["default"] == 0.01


def test_plugin_layers_train_save_load_and_infer_like_builtins(sites, extras_bundle):
    path, report = extras_bundle
    assert [r["epoch"] for r in report["history"]] == [1, 2]
    assert report["history"][1]["loss"] < report["history"][0]["loss"]
    assert report["test"]["accuracy"] >= 0.9, report["test"]
    inspect = cnntool_run("inspect", path, "--json", sites=[sites["extras"]])
    info = json.loads(inspect.stdout)
    assert info["runnable"] and info["problems"] == []
    assert {k: v for k, v in info["providers"].items() if not v.startswith("cnntool==")} == {
        "depthwise_conv2d": EXTRAS,
        "leaky_relu": EXTRAS,
        "prelu": EXTRAS,
    }
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["depthwise_conv2d_1"]["output_shape"] == [16, 11, 11]
    assert rows["depthwise_conv2d_1"]["weights"] == {"weight": [16, 1, 3, 3], "bias": [16]}
    assert rows["prelu_1"]["params"] == 16
    assert rows["leaky_relu_1"]["config"] == {"negative_slope": 0.1}
    digits = [DIGITS / "digit_2.png", DIGITS / "digit_7.png", DIGITS / "digit_9.png"]
    infer = cnntool_run("infer", path, *digits, "--json", sites=[sites["extras"]])
    assert infer.returncode == 0, infer.stderr
    assert [record["label"] for record in json.loads(infer.stdout)] == ["2", "7", "9"]
    evaluate = cnntool_run("eval", path, "--data", "mnist-sample", "--json", sites=[sites["extras"]])
    assert json.loads(evaluate.stdout)["accuracy"] == pytest.approx(report["test"]["accuracy"])


@pytest.mark.skipif(
    installed_here("cnntool-extras"), reason="cnntool-extras is installed in this environment"
)
def test_bundle_of_an_uninstalled_plugin_names_the_distribution(extras_bundle):
    path, report = extras_bundle
    missing = (
        "layer types 'depthwise_conv2d', 'leaky_relu', 'prelu' are not installed; the bundle was made "
        "with distribution cnntool-extras version 0.1.0: install that version from where its author "
        "publishes it (their package index: pip install --index-url URL 'cnntool-extras==0.1.0'; or a "
        "local copy: pip install PATH); a package named cnntool-extras on PyPI may belong to someone else"
    )
    expected = f"{path}: cannot build the network: {missing}"
    with pytest.raises(BundleError) as caught:
        cnntool.load_bundle(path)
    assert str(caught.value) == expected
    infer = cnntool_run("infer", path, DIGITS / "digit_7.png")
    assert (infer.returncode, infer.stdout, infer.stderr) == (1, "", f"error: {expected}\n")
    evaluate = cnntool_run("eval", path, "--data", "mnist-sample")
    assert (evaluate.returncode, evaluate.stderr) == (1, f"error: {expected}\n")
    # inspect still shows the spec, the providers and the stored weights, without running anything.
    inspect = cnntool_run("inspect", path, "--json")
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)
    assert not info["runnable"]
    assert info["providers"]["leaky_relu"] == EXTRAS
    assert info["total_params"] == sum(row["params"] for row in info["layers"]) == 4538
    assert [row["type"] for row in info["layers"]] == [
        layer["type"] for layer in json.loads(EXTRAS_SPEC.read_text())["layers"]
    ]
    first, second, depthwise = info["layers"][0], info["layers"][1], info["layers"][3]
    # Shapes are inferred as far as the installed types reach: up to the first plugin layer.
    assert (first["output_shape"], first["flops"]) == ([8, 26, 26], 2 * 8 * 26 * 26 * 9 + 8 * 26 * 26)
    assert (second["output_shape"], second["flops"]) == (None, None)
    assert depthwise["config"] == {
        "kernel_size": 3,
        "stride": 1,
        "padding": 0,
        "depth_multiplier": 2,
        "use_bias": True,
    }
    assert depthwise["weights"] == {"bias": [16], "weight": [16, 1, 3, 3]}
    assert info["history"] == report["history"]
    text = cnntool_run("inspect", path)
    assert text.returncode == 0
    assert (
        "cannot run here: layer types 'depthwise_conv2d', 'leaky_relu', 'prelu' are not installed"
        in " ".join(text.stdout.split())
    )


def test_broken_plugins_are_named_once_and_everything_else_works(sites, extras_bundle, tmp_path):
    both = [sites["extras"], sites["broken"]]
    layers = cnntool_run("layers", "--json", sites=both)
    assert layers.returncode == 0, layers.stderr
    assert warnings_of(layers) == BROKEN_WARNINGS
    rows = json.loads(layers.stdout)
    failed = {row["type"]: row["error"] for row in rows if row["status"] == "failed"}
    assert failed == {name: message for message in BROKEN_WARNINGS[1:] for name in [message.split("'")[1]]}
    assert [(r["provider"], r["status"]) for r in rows if r["type"] == "relu"] == [
        (f"cnntool=={cnntool.__version__}", "ok"),
        (BROKEN, "rejected"),
    ]
    statuses = {row["type"]: row["status"] for row in rows if row["status"] == "ok"}
    assert set(statuses) == BUILTINS | {"leaky_relu", "prelu", "depthwise_conv2d"} | {
        "wrong_gradient",
        "wrong_shape",
        "lost_config",
        "unsaved_weight",
    }

    path, _ = extras_bundle
    infer = cnntool_run("infer", path, DIGITS / "digit_7.png", "--json", sites=both)
    assert infer.returncode == 0, infer.stderr
    assert json.loads(infer.stdout)[0]["label"] == "7"
    assert warnings_of(infer) == BROKEN_WARNINGS
    train = cnntool_run(
        "train", ROOT / "models/seed_cnn.json", "--data", "mnist-sample", "--epochs", "1",
        "--out", tmp_path / "seed.cnnb", sites=both,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert warnings_of(train) == BROKEN_WARNINGS
    schema = cnntool_run("schema", sites=both)
    mapping = json.loads(schema.stdout)["properties"]["layers"]["items"]["discriminator"]["mapping"]
    assert "leaky_relu" in mapping and "boom" not in mapping and "not_a_layer" not in mapping

    # A spec that uses a broken type is refused with the plugin's error, not "unknown type".
    spec = tmp_path / "boom.json"
    head = [{"type": "flatten"}, {"type": "dense", "units": 2}]
    spec.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": [{"type": "boom"}, *head]}))
    refused = cnntool_run("inspect", spec, sites=both)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        f"error: invalid spec: layer 0 (boom): {BROKEN_WARNINGS[1]}, received {{'type': 'boom'}}"
    )


def test_two_distributions_claiming_one_type(sites, tmp_path):
    layers = cnntool_run("layers", "--json", sites=[sites["clash"]])
    assert layers.returncode == 0
    assert warnings_of(layers) == [CLASH]
    [row] = [row for row in json.loads(layers.stdout) if row["type"] == "swish"]
    assert row["status"] == "conflict" and row["error"] == CLASH
    assert set(row["provider"].split(" and ")) == {"cnntool-clash-a==1.0.0", "cnntool-clash-b==1.0.0"}
    spec = tmp_path / "swish.json"
    head = [{"type": "flatten"}, {"type": "dense", "units": 2}]
    spec.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": [{"type": "swish"}, *head]}))
    refused = cnntool_run("inspect", spec, sites=[sites["clash"]])
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"warning: {CLASH}",
        f"error: invalid spec: layer 0 (swish): {CLASH}, received {{'type': 'swish'}}",
    ]
    # With one of the two on the path, the type works.
    only_a = cnntool_run("plugin", "check", "cnntool-clash-a", "--json", sites=[sites["clash"]])
    assert only_a.returncode == 1
    assert [(r["check"], r["message"]) for r in json.loads(only_a.stdout)["results"]] == [("load", CLASH)]


def test_disable_plugins_loads_only_builtins(sites, extras_bundle):
    disabled = {"CNNTOOL_DISABLE_PLUGINS": "1"}
    both = [sites["extras"], sites["broken"]]
    layers = cnntool_run("layers", "--json", sites=both, env=disabled)
    assert layers.returncode == 0
    assert layers.stderr == ""
    assert {row["type"] for row in json.loads(layers.stdout)} == BUILTINS
    infer = cnntool_run("infer", extras_bundle[0], DIGITS / "digit_7.png", sites=both, env=disabled)
    assert infer.returncode == 1
    assert (
        "are not installed; the bundle was made with distribution cnntool-extras version 0.1.0"
        in infer.stderr
    )
    disabled_hint = "; plugins are disabled (CNNTOOL_DISABLE_PLUGINS is set); unset it to load installed ones"
    assert disabled_hint in infer.stderr
    check = cnntool_run("plugin", "check", "cnntool-extras", sites=both, env=disabled)
    assert (check.returncode, check.stderr) == (
        1,
        "error: plugins are disabled (CNNTOOL_DISABLE_PLUGINS is set); unset it to check cnntool-extras\n",
    )


def test_plugin_check_passes_the_example_and_catches_each_mistake(sites):
    extras = cnntool_run("plugin", "check", "cnntool-extras", "--json", sites=[sites["extras"]])
    assert extras.returncode == 0, extras.stderr
    report = json.loads(extras.stdout)
    assert (report["distribution"], report["version"], report["passed"]) == ("cnntool-extras", "0.1.0", True)
    assert {r["type"] for r in report["results"]} == {"leaky_relu", "prelu", "depthwise_conv2d"}
    assert len(report["results"]) == 6 * 8  # six checks on each of the eight declared examples
    # Declared in the fast style, every example ran compiled and agreed with layer by layer.
    assert [r["message"] for r in report["results"] if r["check"] == "compiled"] == [""] * 8
    text = cnntool_run("plugin", "check", "cnntool-extras", sites=[sites["extras"]])
    assert text.returncode == 0 and text.stdout.rstrip().endswith("all 48 checks passed")

    sloppy = cnntool_run("plugin", "check", "cnntool-sloppy", "--json", sites=[sites["broken"]])
    assert sloppy.returncode == 1
    assert sloppy.stderr.splitlines()[-1] == "error: cnntool-sloppy 0.3.0: 6 of 24 checks failed"
    failures = {
        (r["type"], r["check"]): r["message"] for r in json.loads(sloppy.stdout)["results"] if not r["ok"]
    }
    assert set(failures) == {
        ("wrong_gradient", "gradients"),
        ("wrong_shape", "shapes"),
        ("wrong_shape", "bundle"),
        ("lost_config", "config"),
        ("lost_config", "bundle"),
        ("unsaved_weight", "bundle"),
    }
    # Every message says which check, which layer type and distribution, what was expected and found.
    where = "check {!r} of layer type {!r} from cnntool-sloppy==0.3.0: ".format
    assert failures["wrong_gradient", "gradients"].startswith(
        where("gradients", "wrong_gradient") + "wrong_gradient: gradient of x["
    )
    assert failures["wrong_shape", "shapes"] == where("shapes", "wrong_shape") + (
        "wrong_shape: forward returned float32[2, 3, 8, 8] for input [2, 3, 8, 8], "
        "expected float32[2, 3, 7, 8] from compute_output_shape"
    )
    assert failures["lost_config", "config"] == where("config", "lost_config") + (
        "lost_config: config LostConfigConfig(type='lost_config', name=None, inputs=None, factor=3.0) "
        "dumps to {'type': 'lost_config'}, which validates to "
        "LostConfigConfig(type='lost_config', name=None, inputs=None, factor=2.0)"
    )
    assert failures["unsaved_weight", "bundle"].startswith(
        where("bundle", "unsaved_weight")
        + "unsaved_weight: bundle round trip: outputs differ after loading by up to "
    )
    # Hand-written layers have no plan to compare: the check says so and passes.
    skipped = [r for r in json.loads(sloppy.stdout)["results"] if r["check"] == "compiled"]
    assert {r["message"] for r in skipped} == {
        "skipped: the layer writes forward/backward by hand, so networks holding it run layer by layer"
    }

    broken = cnntool_run("plugin", "check", "cnntool-broken", "--json", sites=[sites["broken"]])
    assert broken.returncode == 1
    results = json.loads(broken.stdout)["results"]
    assert [(r["check"], r["ok"]) for r in results] == [("load", False)] * 7
    assert sorted(r["message"] for r in results) == sorted(BROKEN_WARNINGS)

    absent = cnntool_run("plugin", "check", "cnntool-nowhere")
    assert (absent.returncode, absent.stderr) == (
        1,
        "error: distribution 'cnntool-nowhere' is not installed (pip install cnntool-nowhere)\n",
    )
    numpy = cnntool_run("plugin", "check", "numpy")
    assert numpy.returncode == 1
    assert numpy.stderr.endswith('declares no layer types (no entry points in group "cnntool.layers")\n')


def test_example_plugin_own_tests_pass_against_the_installed_distribution(sites):
    path = os.pathsep.join(filter(None, [str(sites["extras"]), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=ROOT / "plugins" / "cnntool-extras",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


HURTS = "cnntool-hurts==0.4.0"


def test_plugin_check_catches_what_hurts_without_crashing(sites):
    """Declared-call layers with the mistakes a single call does not show: each is a failed
    check saying which check, layer type, distribution, and what was expected and found."""
    result = cnntool_run("plugin", "check", "cnntool-hurts", "--json", sites=[sites["hurts"]])
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == "error: cnntool-hurts 0.4.0: 15 of 35 checks failed"
    failures = {
        (r["type"], r["check"]): r["message"] for r in json.loads(result.stdout)["results"] if not r["ok"]
    }
    not_run = "not run: the process died during check 'shapes'"
    assert set(failures) == {
        ("accumulating_scale", "repeat"),
        ("batch_centered", "compiled"),
        *(("out_of_bounds", check) for check in ("shapes", "gradients", "repeat", "compiled", "bundle")),
        *(("short_output", check) for check in ("shapes", "gradients", "compiled")),
        *(("crashes", check) for check in ("shapes", "gradients", "repeat", "compiled", "bundle")),
    }
    where = f"check {{!r}} of layer type {{!r}} from {HURTS}: ".format
    # An accumulating backward: the second call's gradient is twice the first.
    assert failures["accumulating_scale", "repeat"].startswith(
        where("repeat", "accumulating_scale")
        + "accumulating_scale: backward called twice on the same gradient "
        "gave grads['weight'] "
    )
    assert (
        "the second is twice the first, so backward adds to the gradient (grad += ...)"
        in (failures["accumulating_scale", "repeat"])
    )
    # A write outside the declared output: a bounds-checked kernel names itself and its arrays;
    # the compiled checks, which cannot be bounds-checked, are not run.
    assert failures["out_of_bounds", "shapes"] == where("shapes", "out_of_bounds") + (
        'out_of_bounds: kernel copy_flat(x=X float32[2, 3, 8, 8], out=buf("out") float32[2, 3, 7, 8]) '
        "indexed outside one of its arrays (index is out of bounds); an array is smaller than the kernel "
        "assumes: check compute_output_shape, buffers() and scratch_arrays() against what the kernel reads "
        "and writes"
    )
    assert failures["out_of_bounds", "bundle"] == where("bundle", "out_of_bounds") + (
        "not run: a kernel indexed outside its arrays in check 'shapes'"
    )
    # A declared shape larger than what the kernel writes.
    assert failures["short_output", "shapes"] == where("shapes", "short_output") + (
        "short_output: forward's kernels left 48 of 432 elements of buf('out') unwritten (first at "
        "[1, 2, 3, 0]); its declared shape [2, 3, 9, 8] (from compute_output_shape [3, 9, 8]) is larger "
        "than what the kernels write"
    )
    # Its unwritten elements hold whatever the buffer held: a gradient check of them would
    # pass or fail by chance, so it is not run.
    assert failures["short_output", "gradients"] == where("gradients", "short_output") + (
        "not run: forward leaves part of its output unwritten (check 'shapes')"
    )
    # The plan and layer-by-layer execution disagree once the batch is cut across threads.
    assert failures["batch_centered", "compiled"].startswith(
        where("compiled", "batch_centered") + "batch_centered: network: training step with the batch cut "
        "across threads: loss: compiled and layer by layer differ by up to "
    )
    # A segmentation fault in a hand-written layer is a failed check; the other types still ran.
    assert failures["crashes", "shapes"].startswith(
        where("shapes", "crashes") + "the checking process died (signal SIGSEGV) running the layer"
    )
    assert failures["crashes", "bundle"] == not_run
    passed = {r["type"] for r in json.loads(result.stdout)["results"] if r["ok"]}
    assert "moody" in passed


def test_plugin_layer_failures_name_the_layer_in_train_infer_and_serve(sites, tmp_path):
    import httpx

    spec = tmp_path / "moody.json"
    layers = [{"type": "moody"}, {"type": "flatten"}, {"type": "dense", "units": 10}]
    spec.write_text(json.dumps({"name": "moody", "input_shape": [1, 28, 28], "layers": layers}))
    who = f"layer 0 (moody_1, type 'moody' from {HURTS})"
    check = "this is the plugin's error: check it with `cnntool plugin check cnntool-hurts`"
    train = ["train", spec, "--data", "mnist-sample", "--epochs", "1", "--batch-size", "8"]
    wrong = cnntool_run(
        *train, "--out", tmp_path / "no.cnnb", sites=[sites["hurts"]], env={"CNNTOOL_HURTS_SHAPE": "1"}
    )
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines()[-1] == (
        f"error: {who}: forward returned float32[8, 1, 27, 28], expected float32[8, 1, 28, 28] "
        f"(from compute_output_shape); {check}"
    )
    # Says that the network runs layer by layer, and because of which layer.
    assert f"runs layer by layer because of layer 0 (moody_1, type 'moody' from {HURTS})" in wrong.stderr

    bundle = tmp_path / "moody.cnnb"
    trained = cnntool_run(*train, "--out", bundle, "--json", sites=[sites["hurts"]])
    assert trained.returncode == 0, trained.stderr
    execution = json.loads(trained.stdout)["execution"]
    assert (execution["compiled"], execution["layer"]) == (
        False,
        {"index": 0, "name": "moody_1", "type": "moody", "provider": HURTS},
    )
    failing = {"CNNTOOL_HURTS_FAIL": "1"}
    infer = cnntool_run("infer", bundle, DIGITS / "digit_7.png", sites=[sites["hurts"]], env=failing)
    assert (infer.returncode, infer.stderr.splitlines()[-1]) == (
        1,
        f"error: {who} failed in forward: RuntimeError: moody failed on purpose; this is the plugin's "
        "error: check it with `cnntool plugin check cnntool-hurts` and report it to its authors",
    )

    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(sites["hurts"]), os.environ.get("PYTHONPATH", "")]),
        **failing,
    }
    server = subprocess.Popen(
        [CNNTOOL, "serve", str(bundle), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=environment,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_ready(client, server)
            answer = client.post("/v1/predict", json={"inputs": [[[0.5] * 28] * 28]})
            assert answer.status_code == 500
            assert answer.json()["error"].startswith(
                f"{who} failed in forward: RuntimeError: moody failed on purpose"
            )
            assert client.get("/healthz").status_code == 200  # the server itself is fine
    finally:
        server.terminate()
        server.wait(timeout=60)


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(client, server):
    import time

    import httpx

    deadline = time.monotonic() + 180  # a guard against hanging, not a timing assertion
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited early"
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("server not ready after 180 s")
