"""Writing an output directory atomically, and replacing one only when that is safe.

Exports and imported runs are written to `<out>.tmp-<pid>` and renamed into place when
complete, so a failed or killed writer never leaves a half-written `<out>`. `force`
replaces an existing, non-empty `<out>` only when it is the same kind of output this
project wrote (an export replaces an export, an imported run an imported run) and is
neither the current directory, nor a parent of it, nor one of the inputs or a parent
of them: user data is never deleted by a flag meant to overwrite an old result.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil


def sha256(path):
    """SHA-256 of a file, or of every file of a folder (a SavedModel) in name order."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, n) for d, _, names in os.walk(path) for n in names)
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(path):
    """Flushes every file and folder under `path` (and `path`) to disk, before a rename
    publishes them: a renamed-but-empty file after a power cut is what this prevents."""
    for parent, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync_file(os.path.join(parent, name))
        fsync_dir(parent)


class OutputError(ValueError):
    """An output directory that cannot (or may not) be written; the message says why."""


def _kind_of(path):
    """What this project wrote at `path`: `export`, `evaluation`, `web demo`, `imported run`,
    `training run` or None."""
    # the export directory's owner (TF-free)
    from clade_tf.export.exportdir import is_export

    if os.path.isfile(os.path.join(path, "demo.json")) and os.path.isfile(os.path.join(path, "index.html")):
        return "web demo"
    if is_export(path) and not os.path.exists(os.path.join(path, "config.json")):
        return "export"
    if os.path.isfile(os.path.join(path, "metrics.json")) and not os.path.exists(os.path.join(path, "config.json")):
        return "evaluation"
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        if any(re.match(r"^ckpt-\d+$", n) for n in os.listdir(path)):
            return "training run"
        try:
            with open(config) as f:
                return "imported run" if "source" in json.load(f) else "training run"
        except (OSError, ValueError):
            return None
    return None


def _inside(path, parent):
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def remove_stale_temporaries(out):
    """Removes `<out>.tmp-<pid>` folders of writers that are gone (killed mid-write)."""
    out = os.path.abspath(out.rstrip("/") or "/")
    parent, base = os.path.dirname(out), os.path.basename(out)
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        m = re.match(rf"^{re.escape(base)}\.tmp-(\d+)$", name)
        if m and int(m.group(1)) != os.getpid() and not os.path.exists(f"/proc/{m.group(1)}"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def check_writable(path, flag="--out"):
    """Raises `OutputError` unless the directory `path` exists and is writable, or can be
    created: its nearest existing ancestor is a writable directory."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise OutputError(f"{flag} {path} is a file, not a directory")
        if not os.access(path, os.W_OK):
            raise OutputError(f"{flag} {path} is not writable")
        return
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OutputError(f"{flag} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK):
        raise OutputError(f"{flag} {path}: {ancestor} is not writable")


def check_output(out, kind, force=False, inputs=()):
    """Raises `OutputError` unless `out` may be written as `kind` (see the module doc)."""
    if not out or not out.strip("/"):
        raise OutputError(f"--out {out!r}: not a directory this project may write")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file, not a directory")
    if _inside(os.getcwd(), out):
        raise OutputError(f"--out {out} is the current directory or a parent of it; name a new directory")
    for given in inputs:
        if given and _inside(given, out):
            raise OutputError(f"--out {out} would replace the input {given}; name another directory")
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise OutputError(f"--out {out} exists and is not empty (use --force to replace it)")
        found = _kind_of(out)
        if found != kind:
            what = f"a {found}" if found else "not an output of this project"
            raise OutputError(f"--force replaces only an earlier {kind}; {out} is {what}, so it is kept")
    check_writable(out)
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(parent) and not os.access(parent, os.W_OK):  # the output is renamed into place there
        raise OutputError(f"--out {out}: {parent} is not writable")


@contextlib.contextmanager
def replace_directory(out, kind, force=False, inputs=()):
    """Yields a temporary directory that becomes `out` when the block succeeds and is removed
    when it fails. Checks first (`check_output`) and clears stale temporaries."""
    check_output(out, kind, force, inputs)
    remove_stale_temporaries(out)
    tmp = f"{out.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
    except OSError as e:
        raise OutputError(f"--out {out}: cannot create {tmp} ({e.strerror})") from None
    try:
        yield tmp
        fsync_tree(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
        fsync_dir(os.path.dirname(os.path.abspath(out)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
