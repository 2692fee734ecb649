"""The command lines' shared helpers (clade_tf.cli): usage errors, argument types, exit
statuses and TensorFlow's start-up lines."""

import argparse
import errno
import os
import subprocess
import sys

import pytest

from clade_tf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_usage_error_is_the_error_and_a_hint_to_help(capsys):
    p = cli.ArgumentParser(prog="python -m tool")
    p.add_argument("--steps", type=cli.positive_int)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run").add_argument("--n", type=cli.positive_int, required=True)
    for argv, error in [(["--steps", "0"], "python -m tool: error: argument --steps: 0: expected >= 1"),
                        (["--steps", "x"], "python -m tool: error: argument --steps: 'x': expected an integer >= 1"),
                        (["run"], "python -m tool run: error: the following arguments are required: --n")]:
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2
        prog = error.split(": error:")[0]
        assert capsys.readouterr().err.splitlines() == [error, f"run '{prog} --help' for the options"]
    assert p.parse_args(["--steps", "3"]).steps == 3


def test_the_dataset_lists_are_the_presets():
    from clade_tf.config import DATASETS, PROCEDURAL_DATASETS
    from clade_tf.presets import PRESETS

    # DataConfig validates against config.DATASETS (config cannot import the presets: a circle)
    assert set(DATASETS) == set(PRESETS) and set(PROCEDURAL_DATASETS) <= set(DATASETS)
    assert set(cli.datasets()) == set(PRESETS) >= {"synthetic", "synthetic-scenes", "ade20k", "custom"}
    assert set(cli.datasets(folders_only=True)) == set(PRESETS) - set(PROCEDURAL_DATASETS)
    assert "ade20k" in cli.datasets(True) and "synthetic" not in cli.datasets(True)


class Usage(Exception):
    pass


class Failure(ValueError):  # a failure even though it is a ValueError
    pass


@pytest.mark.parametrize("error, code, line", [
    (Usage("--x 3: bad"), 2, "error: --x 3: bad"),
    (ValueError("img.png: not an image"), 2, "error: img.png: not an image"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "w.h5"), 2,
     "error: [Errno 2] No such file or directory: 'w.h5'"),
    (Failure("diverged"), 1, "error: diverged"),
    (OSError(errno.ENOSPC, "No space left on device", "out/a.png"), 1, "error: out/a.png: No space left on device"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "error: OUT: No space left on device"),
])
def test_exit_code_reports_one_line_and_the_status(error, code, line, capsys):
    assert cli.exit_code(error, usage=(Usage,), failures=(Failure,), where="OUT") == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_exit_code_reraises_a_bug():
    with pytest.raises(KeyError):
        cli.exit_code(KeyError("x"), usage=(Usage,))


# two lines TensorFlow 2.21 prints twice at import on a machine without a GPU, as printed
STARTUP = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
           "I0000 00:00:1796307139.252167    8056 port.cc:153] oneDNN custom operations are on.\n"
           "I0000 00:00:1796307139.252571    8056 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
           "GPU will not be used.\n")
WARNING = "W0000 00:00:1796307139.3    8056 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
ERROR = "E0000 00:00:1796307139.4    8056 cuda_blas.cc:1407] Unable to register cuBLAS factory\n"
OTHER = "/x/site-packages/foo.py:3: UserWarning: something a user should see\n"


def test_startup_lines_below_the_level_are_left_out():
    text = STARTUP + WARNING + OTHER + STARTUP + ERROR
    assert cli.startup_lines_kept(text, 0) == text.splitlines(keepends=True)
    assert cli.startup_lines_kept(text, 1) == [WARNING, OTHER, ERROR]
    assert cli.startup_lines_kept(text, 2) == [OTHER, ERROR]
    assert cli.startup_lines_kept(text, 3) == [OTHER]


@pytest.mark.slow  # a child process importing TensorFlow
@pytest.mark.parametrize("level", ["3", "0"])
def test_import_tensorflow_holds_its_startup_lines_to_the_level(level):
    code = ("import sys; from clade_tf.cli import import_tensorflow; assert 'tensorflow' not in sys.modules; "
            "import_tensorflow(); import tensorflow as tf; print('after', file=sys.stderr); "
            "sys.stderr.write(str(tf.constant(2).numpy()) + chr(10))")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL=level)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert "after" in lines and lines[-1] == "2"  # stderr is back where it was after the import
    if level == "3":
        assert lines == ["after", "2"], res.stderr
    else:  # what TensorFlow prints at level 0 (at least its absl note) passes through untouched
        assert any("absl::InitializeLog" in line for line in lines), res.stderr


def test_positive_int_is_an_argparse_type():
    assert cli.positive_int("7") == 7
    for text in ("0", "-2", "1.5", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.positive_int(text)
