"""What the command lines of the applications share (they may not import each other): the
parser and its help layout, argument types, the dataset names, TensorFlow's import, and
the exception -> exit status tail of every `main()`.

Imports nothing but the standard library at first, so that a command's first call,
`import_tensorflow()`, comes before anything imports TensorFlow.
"""

import argparse
import os
import re
import sys
import tempfile


def datasets(folders_only=False):
    """The --dataset / --preset choices: the presets' names (`clade_tf.presets.PRESETS`, the one
    list of datasets), or only those read from a folder (--dataroot) rather than generated."""
    from clade_tf.config import PROCEDURAL_DATASETS
    from clade_tf.presets import PRESETS

    return tuple(name for name in PRESETS if not (folders_only and name in PROCEDURAL_DATASETS))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and every option's default (where the help text does
    not already say what the default means)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `HelpFormatter`, whose usage errors are two lines: the
    error, and where the options are listed. (argparse prints the whole usage first: for a
    command with many options that is two dozen lines above the one that matters.)

    Sub-command parsers (`add_subparsers`) are of this class too."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\nrun '{self.prog} --help' for the options\n")


def positive_int(text):
    """argparse type of counts and intervals: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected >= 1")
    return value


def exit_code(error, usage=(), failures=(), where=None):
    """Reports the exception that ended a command as one `error:` line on stderr and
    returns the command's exit status; call it from `except Exception as e:` at the end
    of `main()`.

    Status 1 (the command failed): instances of `failures` (whatever else they are), and
    any `OSError` but `FileNotFoundError` (e.g. a full disk), reported as `<file>: <reason>`
    with `where` standing in for an OSError without a file name. Status 2 (the input is
    wrong: fix the command): instances of `usage`, `ValueError` and `FileNotFoundError`.
    Anything else is re-raised: it is a bug, and its traceback is what is needed."""
    if isinstance(error, tuple(failures)):
        print(f"error: {error}", file=sys.stderr)
        return 1
    if isinstance(error, (*usage, ValueError, FileNotFoundError)):
        print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, OSError):
        name = error.filename or where
        print(f"error: {f'{name}: ' if name else ''}{error.strerror or error}", file=sys.stderr)
        return 1
    raise error


# TensorFlow's native libraries log a few lines while they load (the oneDNN notice, "Could not
# find cuda drivers", ...). They are written before TensorFlow sets up its logging, so
# TF_CPP_MIN_LOG_LEVEL does not filter them, and TensorFlow 2.21 runs that start-up code twice
# (with the framework, and again with its profiler extension
# tensorflow.python.profiler.internal._pywrap_profiler_plugin), so each line appears twice.
# absl's line prefix: severity, MMDD, hh:mm:ss.micro (before absl is set up, seconds since the
# epoch: "I0000 00:00:1796307348.317471"), thread id, file:line]
_ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]\s]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_PRELUDE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _min_log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def startup_lines_kept(text, level):
    """The lines of `text` (stderr while TensorFlow loads) that TF_CPP_MIN_LOG_LEVEL=`level` lets
    through: native log lines below the level, and absl's note about them, are left out."""
    kept = []
    for line in text.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if match and _SEVERITY[match.group(1)] < level:
            continue
        if level > 0 and line.rstrip("\n") == _ABSL_PRELUDE:
            continue
        kept.append(line)
    return kept


def import_tensorflow():
    """Imports TensorFlow with its start-up log lines held to TF_CPP_MIN_LOG_LEVEL (the
    commands set 3): stderr goes to a temporary file during the import, and every line of
    it but those is written back. A command's first call; a no-op once TensorFlow is
    loaded, and a plain import without TF_CPP_MIN_LOG_LEVEL."""
    if "tensorflow" in sys.modules or _min_log_level() <= 0:
        import tensorflow
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no descriptor 2 to hold (an embedded interpreter)
        import tensorflow
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            sys.stderr.write("".join(startup_lines_kept(text, _min_log_level())))
            sys.stderr.flush()
