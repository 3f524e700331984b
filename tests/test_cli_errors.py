"""Every command's usage mistakes are one `error:` line on stderr with exit code 2, naming
the command and the nearest valid option, as the README promises (#18 defect 6)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CNNTOOL = str(Path(sys.executable).with_name("cnntool"))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["train", "--bogus"],
            "error: cnntool train: no such option --bogus; did you mean --out? (see `cnntool train --help`)",
        ),
        (
            ["train", "models/seed_cnn.json", "--epoch", "3"],
            "error: cnntool train: no such option --epoch; did you mean --epochs? "
            "(see `cnntool train --help`)",
        ),
        (
            ["train", "models/seed_cnn.json", "--epochs", "0"],
            "error: cnntool train: invalid value for '--epochs': Input should be greater than or equal to 1 "
            "(see `cnntool train --help`)",
        ),
        (
            ["eval"],
            "error: cnntool eval: missing argument 'bundle' (see `cnntool eval --help`)",
        ),
        (
            ["infer", "m.cnnb", "a.png", "--top-k", "x"],
            "error: cnntool infer: invalid value for '--top-k' / '-k': Input should be a valid integer, "
            "unable to parse string as an integer (see `cnntool infer --help`)",
        ),
        (
            ["serve", "m.cnnb", "--prot", "80"],
            "error: cnntool serve: no such option --prot; did you mean --port? (see `cnntool serve --help`)",
        ),
        (
            ["data", "info", "mnist", "--jsn"],
            "error: cnntool data info: no such option --jsn; did you mean --json? "
            "(see `cnntool data info --help`)",
        ),
        (
            ["trian"],
            "error: cnntool: no such command 'trian'. Did you mean 'train'? (see `cnntool --help`)",
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args, line, root):
    done = subprocess.run([CNNTOOL, *args], capture_output=True, text=True, timeout=60, cwd=root)
    assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", "")


def test_no_arguments_still_shows_the_help(root):
    done = subprocess.run([CNNTOOL], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 0
    assert "Usage: cnntool [OPTIONS] COMMAND [ARGS]..." in done.stdout + done.stderr


def test_train_help_says_where_progress_goes(root):
    done = subprocess.run([CNNTOOL, "train", "--help"], capture_output=True, text=True, timeout=60, cwd=root)
    text = " ".join(done.stdout.split())
    assert "Progress and messages go to stderr" in text
    assert "--log FILE keeps one JSON line per epoch" in text


def test_schema_takes_json_as_the_readme_says(root):
    done = subprocess.run([CNNTOOL, "schema", "--json"], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"]
