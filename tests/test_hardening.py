"""Hostile and clumsy use: damaged checkpoints, full disks, bad paths and files, races.

Each test reproduces one case of what used to fail (a raw traceback, a crash, a
silently wrong result or lost data) and checks the one-line message, the exit code and
that nothing is lost or left behind.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from clade_tf import presets, rundir
from clade_tf.config import MonitorConfig, OptimConfig
from clade_tf.rundir import RunDirectory
from conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def tiny_cfg(steps=2):
    return TINY.run_config("clade", optim=OptimConfig(batch_size=4, steps=steps),
                           monitor=MonitorConfig(checkpoint_every=1, log_every=1, image_every=100),
                           data={"synthetic_length": 16})


@pytest.fixture(scope="module")
def gan():
    """A built (untrained) GAN: checkpoints are written from it without training."""
    from clade_tf.gan import build_gan

    return build_gan(tiny_cfg())


def make_run(path, gan, steps=(1, 2)):
    run = RunDirectory(path)
    run.write_config(tiny_cfg(max(steps)))
    for s in steps:
        run.save_checkpoint(gan, s)
    return run


def truncate(path, keep=1000):
    with open(path, "r+b") as f:
        f.truncate(keep)


def errors(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def one_error(capsys):
    err = capsys.readouterr().err
    lines = errors(err)
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return lines[0]


# --- 5: a damaged newest checkpoint ---------------------------------------------------

def test_a_damaged_newest_checkpoint_is_detected_named_and_skipped(tmp_path, gan, capsys):
    run = make_run(tmp_path / "r", gan)
    for _, path in run.checkpoints():
        assert rundir.verify_checkpoint(path) is None
        assert os.path.isfile(os.path.join(path, "manifest.json"))
    truncate(run.file("ckpt-2", "generator.weights.h5"))
    problem = rundir.verify_checkpoint(run.file("ckpt-2"))
    assert problem and "generator.weights.h5" in problem
    # export (and every reader of the generator) falls back, and says so
    assert run.generator_weights() == run.file("ckpt-1", "generator.weights.h5")
    err = capsys.readouterr().err
    assert f"{run.file('ckpt-2')} is damaged (generator.weights.h5" in err and run.file("ckpt-1") in err
    # a damaged byte of the same size is caught too (checksum, not only size)
    with open(run.file("ckpt-1", "d_optimizer.npz"), "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))
    assert "SHA-256" in rundir.verify_checkpoint(run.file("ckpt-1"))


def test_resume_continues_from_the_newest_intact_checkpoint(tmp_path, gan, tiny_preset, capsys):
    from train.run import run as train

    run = make_run(tmp_path / "r", gan)
    truncate(run.file("ckpt-2", "discriminator.weights.h5"))
    # steps=1: the run is complete at the restored step, so nothing is trained
    summary = train(tiny_cfg(steps=1), str(run.path), verbose=0)
    assert summary["start_step"] == 1 and summary.get("nothing_to_do")
    err = capsys.readouterr().err
    assert "ckpt-2 is damaged (discriminator.weights.h5" in err and "damaged-ckpt-2" in err
    # set aside for inspection, not deleted; the step can be written again
    assert os.path.isdir(run.file("damaged-ckpt-2")) and [s for s, _ in run.checkpoints()] == [1]


def test_export_cli_uses_the_intact_checkpoint_and_says_which(tmp_path, gan, capsys):
    from export.__main__ import main

    run = make_run(tmp_path / "r", gan)
    truncate(run.file("ckpt-2", "generator.weights.h5"))
    assert main(["--run", str(run.path), "--out", str(tmp_path / "e"), "--formats", "saved_model"]) == 0
    err = capsys.readouterr().err
    assert "ckpt-2 is damaged" in err and f"using {run.file('ckpt-1')}" in err


# --- 6: a full disk ----------------------------------------------------------------------

def test_a_full_disk_stops_the_checkpoint_cleanly(tmp_path, gan, monkeypatch):
    run = make_run(tmp_path / "r", gan, steps=(1,))

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(rundir.CheckpointWriteError, match=r"step 2: .*No space left on device.*ckpt-1 kept"):
        run.save_checkpoint(gan, 2)
    monkeypatch.undo()
    assert [s for s, _ in run.checkpoints()] == [1] and rundir.verify_checkpoint(run.file("ckpt-1")) is None
    assert not [n for n in os.listdir(run.path) if n.startswith(".")]


def test_a_write_failing_midway_removes_the_partial_checkpoint(tmp_path, gan, monkeypatch):
    import numpy

    run = make_run(tmp_path / "r", gan, steps=(1, 2, 3))

    def fail(*a, **k):  # the disk fills up after the reservation (another writer)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), a[0])

    monkeypatch.setattr(numpy, "savez", fail)
    with pytest.raises(rundir.CheckpointWriteError, match="ckpt-3 kept"):
        run.save_checkpoint(gan, 4)
    monkeypatch.undo()
    # nothing rotated out, nothing half-written left
    assert [s for s, _ in run.checkpoints()] == [1, 2, 3]
    assert not [n for n in os.listdir(run.path) if n.startswith(".tmp")]


FULL_DISK = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = [{root!r}, os.path.join({root!r}, "tests")]
    from conftest import TINY
    from clade_tf import presets
    presets.PRESETS["synthetic"] = TINY
    from train.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _mount_tmpfs(path, size):
    os.makedirs(path)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip("needs a small tmpfs (root and mount permission)")
    return path


@pytest.mark.slow
def test_training_on_a_full_disk_exits_with_one_line_and_keeps_the_last_checkpoint(tmp_path, gan):
    disk = _mount_tmpfs(tmp_path / "disk", "64m")
    try:
        make_run(disk / "r", gan, steps=(1,))
        used = sum(os.path.getsize(os.path.join(disk, "r", "ckpt-1", n)) for n in os.listdir(disk / "r" / "ckpt-1"))
        # fill the disk so that less than one more checkpoint fits
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * max(free - used // 2, 0))
        res = subprocess.run([sys.executable, "-c", FULL_DISK.format(root=ROOT), "--out", str(disk / "r"),
                              "--steps", "3", "--batch-size", "4", "--checkpoint-every", "1",
                              "--synthetic-length", "16", "--image-every", "100", "--log-every", "1"],
                             env=ENV, capture_output=True, text=True, timeout=600)
        assert res.returncode == 1, res.stderr[-3000:]  # not 139 (a crash)
        lines = errors(res.stderr)
        assert len(lines) == 1 and "No space left on device" in lines[0] and "ckpt-1 kept" in lines[0], res.stderr
        run = RunDirectory(disk / "r")
        assert [s for s, _ in run.checkpoints()] == [1] and rundir.verify_checkpoint(run.file("ckpt-1")) is None
        assert not [n for n in os.listdir(run.path) if n.startswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- 7: one-line errors instead of tracebacks ------------------------------------------

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, gan):
    from export.__main__ import main

    root = tmp_path_factory.mktemp("exported")
    make_run(root / "run", gan, steps=(1,))
    assert main(["--run", str(root / "run"), "--out", str(root / "e"), "--formats", "tflite-fp32"]) == 0
    return root / "e"


def write_label(path, value=0, size=32):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("case", ["file", "under a file", "batch 0", "full disk"])
def test_export_cli_path_errors_are_one_line(case, tmp_path, gan, capsys, monkeypatch):
    from export.__main__ import main

    run = make_run(tmp_path / "r", gan, steps=(1,))
    (tmp_path / "afile").write_text("keep me")
    out = {"file": "afile", "under a file": "afile/sub"}.get(case, "e")
    args = ["--run", str(run.path), "--out", str(tmp_path / out), "--formats", "saved_model"]
    expected, code = {"file": ("is a file", 2), "under a file": ("is a file", 2), "batch 0": ("--batch 0", 2),
                      "full disk": ("No space left on device", 1)}[case]
    if case == "batch 0":
        args += ["--batch", "0"]
    if case == "full disk":
        from clade_tf.export import exporter

        def full(kind, path, *a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        monkeypatch.setattr(exporter, "write_format", full)
    assert main(args) == code
    assert expected in one_error(capsys)
    assert (tmp_path / "afile").read_text() == "keep me"
    assert not (tmp_path / "e").exists() and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only tmpfs")
def test_export_and_train_refuse_a_read_only_out(tmp_path, gan, tiny_preset, capsys):
    from export.__main__ import main as export_main
    from train.cli import main as train_main

    run = make_run(tmp_path / "r", gan, steps=(1,))
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)]).returncode:
        pytest.skip("mount not permitted")
    try:
        assert export_main(["--run", str(run.path), "--out", str(ro / "e"), "--formats", "saved_model"]) == 2
        assert "not writable" in one_error(capsys)
        assert train_main(["--out", str(ro / "t"), "--steps", "1"]) == 2
        assert "not writable" in one_error(capsys)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.parametrize("case", ["corrupt tflite", "corrupt onnx", "out under a file", "folder into a file"])
def test_infer_errors_are_one_line(case, tmp_path, export_dir, capsys):
    from export.infer import main

    model = tmp_path / "m"
    shutil.copytree(export_dir, model)
    label = write_label(tmp_path / "labels" / "a.png")
    (tmp_path / "afile").write_text("keep me")
    args = ["--model", str(model), "--labels", label, "--instances", label, "--out", str(tmp_path / "o.png")]
    if case.startswith("corrupt"):
        name = "model_fp32.tflite" if "tflite" in case else "model.onnx"
        (model / name).write_bytes(b"not a model at all")
        args[1] = str(model / name)
        expected = f"{model / name}: cannot load"
    elif case == "out under a file":
        args[-1] = str(tmp_path / "afile" / "o.png")
        expected = "is a file"
    else:
        args[3] = args[5] = str(tmp_path / "labels")
        args[-1] = str(tmp_path / "afile")
        expected = "is a file"
    assert main(args) == 2
    assert expected in one_error(capsys)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_from_torch_on_a_folder_is_one_line(tmp_path, capsys):
    from export.from_torch import main

    assert main([str(tmp_path), "--preset", "synthetic", "--out", str(tmp_path / "imp")]) == 2
    assert f"{tmp_path} is a folder" in one_error(capsys)


@pytest.mark.parametrize("tf_config, expected", [
    ("[]", "expected a JSON object"),
    ('{"cluster": {"worker": "localhost:1234"}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker: expected a list of 'host:port' strings"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}', "an index into its list"),
])
def test_bad_tf_config_is_one_line_and_creates_nothing(tf_config, expected, tmp_path, tiny_preset, monkeypatch,
                                                      capsys):
    from train.cli import main

    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert main(["--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert expected in one_error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, expected", [
    ("[1, 2, 3]", "entry 0 1: expected four numbers r g b class"),
    ('{"0,0,0": 1, "1,2": 3}', "key '1,2': expected four numbers"),
    ("0 0 0 1\n0 0 zero 1\n", "line 2 '0 0 zero 1': expected four integers"),
    ("0 0 300 1\n", "line 1: [0, 0, 300, 1] is out of range"),
    ('"red"', "expected a JSON object"),
])
def test_palette_errors_name_the_file_and_the_entry(content, expected, tmp_path):
    from clade_tf.data.folders import load_palette

    path = tmp_path / "palette.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        load_palette(str(path))
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)


def test_train_out_is_a_file_is_one_line(tmp_path, tiny_preset, capsys):
    from train.cli import main

    (tmp_path / "afile").write_text("keep me")
    assert main(["--out", str(tmp_path / "afile"), "--steps", "1"]) == 2
    assert "is a file" in one_error(capsys)
    assert (tmp_path / "afile").read_text() == "keep me"


# --- 8: messages name the file ---------------------------------------------------------

def test_a_truncated_config_json_is_named_by_train_and_export(tmp_path, gan, tiny_preset, capsys):
    from export.__main__ import main as export_main
    from train.cli import main as train_main

    run = make_run(tmp_path / "r", gan, steps=(1,))
    with open(run.config_path) as f:
        text = f.read()
    with open(run.config_path, "w") as f:
        f.write(text[: len(text) // 2])
    assert train_main(["--out", str(run.path), "--steps", "2"]) == 2
    assert f"{run.config_path}: not valid JSON" in one_error(capsys)
    assert export_main(["--run", str(run.path), "--out", str(tmp_path / "e"), "--formats", "onnx"]) == 2
    assert f"{run.config_path}: not valid JSON" in one_error(capsys)


def write_custom(root, n=3, bad_label=None, orphan=False):
    from PIL import Image

    os.makedirs(root / "images", exist_ok=True)
    for i in range(n):
        write_label(root / "labels" / f"x{i}.png", value=i % 2)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / f"x{i}.png")
    if bad_label is not None:
        (root / "labels" / f"x{bad_label}.png").write_bytes(b"not a png")
    if orphan:
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / "orphan.png")


def custom_data(root, **kw):
    return presets.resolve_preset("custom", 2, False, False).data_config(dataroot=str(root), **kw)


def test_no_usable_samples_names_the_folder(tmp_path):
    from clade_tf.data import pipeline, sources

    write_custom(tmp_path, n=2)
    for i in range(2):
        (tmp_path / "labels" / f"x{i}.png").write_bytes(b"broken")
    data = custom_data(tmp_path, skip_bad_samples=True)
    gen = presets.resolve_preset("custom", 2, False, False).generator_config()
    source = sources.make_source(data, gen)
    ds = pipeline.make_dataset(source, 1, gen.image_height, gen.image_width, num_steps=1)
    with pytest.raises(Exception, match=rf"{tmp_path} \(custom layout, train split\): every one of its 2 samples"):
        next(iter(ds))
    with pytest.raises(ValueError, match=rf"{tmp_path} \(custom layout, train split\): no usable samples"):
        sources.first_samples(data, gen, 0, 2)


# --- 9: a failed start leaves nothing behind -------------------------------------------

def test_a_run_failing_before_its_first_checkpoint_leaves_no_directory(tmp_path, tiny_preset, monkeypatch):
    from clade_tf.data import folders, sources
    from train.run import run

    def unreadable(*a, **k):  # the sample batch is read after config.json was written
        raise folders.BadSample("val/x.png: unreadable label map")

    monkeypatch.setattr(sources, "fixed_batch", unreadable)
    with pytest.raises(folders.BadSample):
        run(tiny_cfg(), str(tmp_path / "new" / "r"), verbose=0)
    assert not (tmp_path / "new" / "r").exists()
    # an existing directory is the user's: it is kept, with what it held
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(folders.BadSample):
        run(tiny_cfg(), str(tmp_path / "mine"), verbose=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --- 10: hangs and races -----------------------------------------------------------------

def test_a_second_trainer_on_the_same_run_is_refused(tmp_path, tiny_preset, capsys):
    from train.cli import main

    run = RunDirectory(tmp_path / "r")
    with run.lock():
        assert main(["--out", str(run.path), "--steps", "1"]) == 1
        message = one_error(capsys)
        assert f"{run.path} is being written by another training process (pid {os.getpid()})" in message
    # released: it can be taken again
    with run.lock():
        pass
    with run.lock(), pytest.raises(rundir.RunLockedError), RunDirectory(tmp_path / "r").lock():
        pass


def test_the_lock_of_a_killed_trainer_is_released(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
            "from clade_tf.rundir import RunDirectory\n"
            f"with RunDirectory({str(tmp_path / 'r')!r}).lock():\n    print('locked', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunLockedError, match=f"pid {proc.pid}"), RunDirectory(tmp_path / "r").lock():
            pass
    finally:
        proc.kill()
        proc.wait()
    with RunDirectory(tmp_path / "r").lock():
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_missing_multiworker_peer_times_out_naming_it(tmp_path):
    port = free_port()  # nothing listens there: the peer was never started
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"]}
    env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "train", "--strategy", "multiworker", "--steps", "1",
                          "--out", str(tmp_path / "r"), "--peer-timeout", "3"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = errors(res.stderr)
    assert len(lines) == 1 and f"worker 1 at 127.0.0.1:{port} did not answer within 3 s" in lines[0], res.stderr
    assert time.time() - t0 < 120


def test_checkpoints_config_and_exports_are_flushed_before_they_are_renamed(tmp_path, gan, monkeypatch):
    """fsync of every file and of the folder before the rename publishes them (a power cut
    after the rename must not leave an empty file), and of the parent after it."""
    events = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *a, **k):
        events.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
        return (real_replace if rename.replace else real_rename)(src, dst, *a, **k)

    def replace(src, dst, *a, **k):
        rename.replace = True
        try:
            return rename(src, dst, *a, **k)
        finally:
            rename.replace = False

    rename.replace = False
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)

    def check(final):
        moves = [e for e in events if e[0] == "rename" and e[2] == os.path.abspath(final)]
        assert moves, events
        src = moves[-1][1]
        at = events.index(moves[-1])
        synced = {e[1] for e in events[:at] if e[0] == "fsync"}
        files = [os.path.join(final, n) for n in os.listdir(final)] if os.path.isdir(final) else [final]
        for f in files:
            assert os.path.join(src, os.path.basename(f)) in synced or src in synced, (f, synced)
        assert ("fsync", os.path.dirname(os.path.abspath(final))) in events[at:]

    run = RunDirectory(tmp_path / "r")
    run.write_config(tiny_cfg())
    check(run.config_path)
    run.save_checkpoint(gan, 1)
    check(run.file("ckpt-1"))
    from clade_tf.outdir import replace_directory

    with replace_directory(str(tmp_path / "e"), "export") as tmp, open(os.path.join(tmp, "report.json"), "w") as f:
        f.write("{}")
    check(str(tmp_path / "e"))


# --- 11: --label-nc auto and --skip-bad-samples ----------------------------------------

def test_label_nc_auto_honours_skip_bad_samples_and_reports_each_sample_once(tmp_path, capfd):
    from clade_tf.data import report
    from train.cli import build_parser, resolve

    report.forget_reported()
    write_custom(tmp_path / "d", n=3, bad_label=2, orphan=True)
    args = ["--dataset", "custom", "--dataroot", str(tmp_path / "d"), "--label-nc", "auto",
            "--out", str(tmp_path / "r")]
    from clade_tf.data.folders import BadSample

    with pytest.raises(BadSample):
        resolve(build_parser().parse_args([*args, "--steps", "1"]))
    cfg, *_ = resolve(build_parser().parse_args([*args, "--skip-bad-samples", "--epochs", "1"]))
    assert cfg.data.label_nc == 2  # x0 and x1 hold classes 0 and 1; x2 is unreadable and skipped
    from clade_tf.data import sources

    sources.make_source(cfg.data, cfg.generator)  # training opens the folder again
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert sum("x2.png" in line for line in lines) == 1, err
    assert sum("orphan.png" in line for line in lines) == 1, err
