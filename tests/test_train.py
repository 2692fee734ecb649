"""Training tests: GAN losses, resume, crash safety, CLI errors, distribution strategies."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from clade_tf import presets
from clade_tf.config import MonitorConfig, OptimConfig
from clade_tf.rundir import RunDirectory
from conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def list_checkpoints(run_dir):
    return RunDirectory(run_dir).checkpoints()


def tiny_cfg(steps=4, norm="clade", **optim):
    """The tiny synthetic run configuration (16 samples, batch 4)."""
    return TINY.run_config(norm, optim=OptimConfig(batch_size=4, steps=steps, **optim),
                           monitor=MonitorConfig(checkpoint_every=2, log_every=1, image_every=2),
                           data={"synthetic_length": 16})


def checkpoint_arrays(path):
    """Every array of a checkpoint folder: the networks' `.weights.h5` (all variables, BatchNorm
    statistics and spectral-norm vectors included) and the optimizers' `.npz` (moments, step count)."""
    import h5py

    out = {}
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        if name.endswith(".h5"):
            with h5py.File(f, "r") as h:
                h.visititems(lambda k, v, n=name: out.__setitem__(f"{n}:{k}", v[()])
                             if isinstance(v, h5py.Dataset) else None)
        elif name.endswith(".npz"):
            with np.load(f) as d:
                out.update({f"{name}:{k}": d[k] for k in d.files})
    assert {k.split(":")[0] for k in out} >= {"generator.weights.h5", "discriminator.weights.h5",
                                              "g_optimizer.npz", "d_optimizer.npz"}, sorted(out)
    return out


def assert_same_checkpoint(a, b):
    x, y = checkpoint_arrays(a), checkpoint_arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def trainable_weights(cfg, ckpt):
    """`{path: array}` of the trainable variables of G and D in a checkpoint (what the optimizers
    change; BatchNorm statistics and spectral-norm vectors change on any training-mode pass)."""
    from clade_tf.gan import build_gan

    gan = build_gan(cfg)
    RunDirectory.restore_checkpoint(ckpt, gan)
    return {net: {v.path: v.numpy() for v in m.trainable_weights}
            for net, m in (("G", gan.generator), ("D", gan.discriminator))}


def run_quiet(cfg, out, **kw):
    from train.run import run

    return run(cfg, str(out), verbose=0, **kw)


def test_resume_continues_step_count_weights_and_data(tiny_preset, tmp_path):
    from clade_tf import Generator

    # interrupted: 4 steps, then continued to 6
    a = run_quiet(tiny_cfg(steps=4), tmp_path / "a")
    assert a["final_step"] == 4 and [s for s, _ in list_checkpoints(tmp_path / "a")] == [2, 4]
    b = run_quiet(tiny_cfg(steps=6), tmp_path / "a")
    assert b["start_step"] == 4 and b["final_step"] == 6
    # uninterrupted: 6 steps
    c = run_quiet(tiny_cfg(steps=6), tmp_path / "c")
    assert c["start_step"] == 0 and c["final_step"] == 6
    # the resumed run ends bit for bit where the uninterrupted one does: both networks (with their
    # BatchNorm statistics and spectral-norm vectors) and both optimizers; and CPU runs are
    # deterministic: the two fresh runs agree at step 4
    assert_same_checkpoint(tmp_path / "a" / "ckpt-6", tmp_path / "c" / "ckpt-6")
    assert_same_checkpoint(tmp_path / "a" / "ckpt-4", tmp_path / "c" / "ckpt-4")
    ga = keras.models.load_model(str(tmp_path / "a" / "generator.keras"))
    assert isinstance(ga, Generator)
    # and it really trained: steps 3-6 moved the trainable weights of both networks
    before = trainable_weights(tiny_cfg(), tmp_path / "a" / "ckpt-2")
    after = trainable_weights(tiny_cfg(), tmp_path / "a" / "ckpt-6")
    for net in ("G", "D"):
        moved = [k for k in before[net] if not np.array_equal(before[net][k], after[net][k])]
        assert len(moved) >= 0.9 * len(before[net]), (net, sorted(set(before[net]) - set(moved)))
    # config.json lets export rebuild the model without flags
    rec = json.loads((tmp_path / "a" / "config.json").read_text())
    assert rec["generator"] == ga.config.to_dict() and rec["optim"]["steps"] == 6
    assert RunDirectory(tmp_path / "a").read_config() == tiny_cfg(steps=6)  # round trip
    # nothing more to do at the total
    d = run_quiet(tiny_cfg(steps=6), tmp_path / "a")
    assert d["final_step"] == 6 and d["start_step"] == 6 and d["nothing_to_do"]
    # a resume applies (and records) new learning rates and a new decay: lr(7) = 5e-5 * (1 - 1/2)
    run_quiet(tiny_cfg(steps=8, g_lr=5e-5, decay_start=6), tmp_path / "a")
    assert RunDirectory(tmp_path / "a").read_config().optim.g_lr == 5e-5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "a" / "logs" / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    lr = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("lr/generator")}
    assert lr[6] == pytest.approx(1e-4) and lr[7] == pytest.approx(2.5e-5) and lr[8] == pytest.approx(0.0)


def test_tensorboard_has_losses_lrs_images_and_fidelity(tiny_preset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clade_tf.data import sources, synthetic
    from train.run import NUM_SAMPLE_IMAGES

    cfg = tiny_cfg(steps=2)
    s = run_quiet(cfg, tmp_path / "r")
    logdir = tmp_path / "r" / "logs" / "train"
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    # the reported fidelity is the saved generator's on the fixed sample batch, as logged
    batch = sources.fixed_batch(cfg.data, cfg.generator, cfg.seed, NUM_SAMPLE_IMAGES)
    g = keras.models.load_model(str(tmp_path / "r" / "generator.keras"))
    fake = g({k: tf.constant(batch[k]) for k in cfg.generator.data_keys}, training=False)
    fidelity = synthetic.fidelity(fake.numpy(), batch["label"], cfg.generator.num_classes)
    logged = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("synthetic/fidelity")}
    assert s["quality_name"] == "synthetic fidelity"
    assert s["quality_final"] == pytest.approx(fidelity, abs=1e-6) == logged[2]
    assert s["quality_init"] == pytest.approx(logged[0]) and s["quality_init"] < 0.5  # untrained: near 1/6
    tags = set(acc.Tags()["tensors"])
    for t in ("loss/G_GAN", "loss/G_Feat", "loss/D_Fake", "loss/D_Real", "lr/generator",
              "lr/discriminator", "synthetic/fidelity", "samples/label_generated_real"):
        assert t in tags, (t, tags)
    lr = [tf.make_ndarray(e.tensor_proto) for e in acc.Tensors("lr/discriminator")]
    assert float(lr[0]) == pytest.approx(4e-4)
    # the PNGs are the TensorBoard grid with each pixel an 8x8 block: 32-px tiles shown 256 px tall
    from PIL import Image

    logged_grid = tf.image.decode_png(acc.Tensors("samples/label_generated_real")[0].tensor_proto.string_val[2])
    logged_grid = logged_grid.numpy()
    rows = 6  # RunMonitor's grid_rows: label | generated | real, 2-px gaps
    assert logged_grid.shape == (rows * 32 + (rows - 1) * 2, 3 * 32 + 2 * 2, 3)
    for name in ("samples/step_0000000.png", "samples_final.png"):
        png = np.asarray(Image.open(tmp_path / "r" / name).convert("RGB"))
        assert png.shape == (logged_grid.shape[0] * 8, logged_grid.shape[1] * 8, 3), name
        assert (png == np.kron(png[::8, ::8], np.ones((8, 8, 1), np.uint8))).all(), name
    step0 = np.asarray(Image.open(tmp_path / "r" / "samples" / "step_0000000.png").convert("RGB"))
    np.testing.assert_array_equal(step0[::8, ::8], logged_grid)


def test_run_dir_with_other_settings_is_refused(tiny_preset, tmp_path):
    from train.run import UsageError

    run_quiet(tiny_cfg(steps=2), tmp_path / "r")
    with pytest.raises(UsageError, match=r"different settings: generator architecture: norm_mode \('clade' -> 'spade'\)"):
        run_quiet(tiny_cfg(steps=4, norm="spade"), tmp_path / "r")
    with pytest.raises(UsageError, match=r"different settings: batch_size \(4 -> 2\)"):
        run_quiet(TINY.run_config(optim=OptimConfig(batch_size=2, steps=4), data={"synthetic_length": 16}),
                  tmp_path / "r")
    with pytest.raises(UsageError, match="--resume: no checkpoint"):
        run_quiet(tiny_cfg(steps=2), tmp_path / "empty", resume_required=True)


def test_linear_decay_schedule():
    from clade_tf.gan import LinearDecay

    s = LinearDecay(1e-4, 100, 200)
    assert float(s(0)) == pytest.approx(1e-4) and float(s(100)) == pytest.approx(1e-4)
    assert float(s(150)) == pytest.approx(5e-5) and float(s(200)) == pytest.approx(0.0)


# --- CLI -------------------------------------------------------------------------------

def cli(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_cli_help_documents_flags():
    res = cli("--help")
    assert res.returncode == 0
    for flag in ("--dataset", "--dataroot", "--norm", "--batch-size", "--steps", "--epochs", "--out",
                 "--resume", "--vgg-weights", "--use-vae", "--strategy", "--label-nc", "--palette",
                 "--skip-bad-samples", "--mixed-precision"):
        assert flag in res.stdout
    # the layouts an empty --dataroot's error points to, one entry per folder dataset
    layouts = res.stdout[res.stdout.index("folder layouts of --dataroot"):]
    for dataset, folders in [("ade20k, ade20k-outdoor", "annotations/"), ("cityscapes", "gtFine/train/"),
                             ("coco-stuff", "train_label/"), ("custom", "labels/")]:
        assert f"\n  {dataset} " in layouts and folders in layouts, layouts


@pytest.mark.slow
def test_cli_usage_error_is_two_lines_without_tensorflow_start_up_lines():
    res = cli("--steps", "0", "--out", "/nonexistent/r")
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["python -m train: error: argument --steps: 0: expected >= 1",
                                       "run 'python -m train --help' for the options"], res.stderr
    res = cli("--no-such-flag")
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["python -m train: error: unrecognized arguments: --no-such-flag",
                                       "run 'python -m train --help' for the options"], res.stderr


@pytest.mark.slow
def test_an_empty_dataroot_is_one_line_without_the_vgg_notice(tmp_path):
    """The error names the layout; nothing about the run (the VGG notice) is printed for a
    run that never starts, and TensorFlow's start-up lines stay below TF_CPP_MIN_LOG_LEVEL=3."""
    (tmp_path / "empty").mkdir()
    res = cli("--dataset", "ade20k", "--dataroot", str(tmp_path / "empty"), "--steps", "1", "--out",
              str(tmp_path / "r"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines() == [(f"error: {tmp_path / 'empty'}: no train samples in the ade20k layout "
                                        "(python -m train --help lists each layout)")], res.stderr
    assert res.stdout == "" and not os.path.exists(tmp_path / "r")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "ade20k", "--steps", "2"], "error: --dataset ade20k needs --dataroot DIR"),
        (["--dataset", "ade20k", "--label-nc", "5"], "error: --label-nc applies to --dataset custom only"),
        (["--dataset", "custom", "--dataroot", "/nonexistent", "--steps", "2", "--label-nc", "3"],
         "error: --dataroot /nonexistent does not exist"),
        (["--steps", "2", "--epochs", "1"], "error: give --steps or --epochs, not both"),
        (["--vgg-weights", "/nope.h5", "--steps", "1", "--out", "{tmp}/v"], "error: VGG19 weights file not found: '/nope.h5'"),
        (["--resume", "--out", "{tmp}/none", "--steps", "1"], "error: --resume: no checkpoint in"),
        (["--dataroot", "{tmp}", "--steps", "1"], ("error: --dataroot {tmp}: --dataset synthetic is generated "
         "in memory and reads no folder; give --dataset with the folder's layout (ade20k, ade20k-outdoor, "
         "cityscapes, coco-stuff, custom)")),
        # everything missing at once, not one thing per run
        (["--dataset", "ade20k"], ("error: --dataset ade20k needs --dataroot DIR; --dataset ade20k: give "
                                   "--steps or --epochs")),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    res = cli(*[a.format(tmp=tmp_path) for a in args])
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message.format(tmp=tmp_path)), res.stderr[-2000:]
    assert "InitializeLog" not in res.stderr and "] oneDNN" not in res.stderr, res.stderr[-2000:]


def write_custom(root, n=4, maxlab=3, bad_value=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(f"{root}/images")
    os.makedirs(f"{root}/labels")
    for i in range(n):
        lab = np.kron(rng.integers(0, maxlab, (4, 4)), np.ones((16, 16), np.int64)).astype(np.uint8)
        if bad_value is not None and i == 1:
            lab[5, 5] = bad_value
        Image.fromarray(lab).save(f"{root}/labels/x{i}.png")
        Image.fromarray((rng.uniform(0, 255, (64, 64, 3))).astype(np.uint8)).save(f"{root}/images/x{i}.png")


@pytest.mark.slow
def test_cli_custom_label_nc_auto_and_out_of_range(tmp_path):
    root = str(tmp_path / "data")
    write_custom(root, bad_value=7)
    res = cli("--dataset", "custom", "--dataroot", root, "--label-nc", "3", "--steps", "2",
              "--out", str(tmp_path / "r1"), "--batch-size", "2")
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "x1.png: label value 7" in err[0] and "3 classes" in err[0] and "--label-nc" in err[0]
    res = cli("--dataset", "custom", "--dataroot", root, "--label-nc", "auto", "--steps", "1",
              "--out", str(tmp_path / "r2"), "--batch-size", "2", "--checkpoint-every", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--label-nc auto: 4 classes found in 4 label maps: [0, 1, 2, 7]; using label_nc=8" in res.stdout


@pytest.mark.slow
def test_kill_9_loses_at_most_one_checkpoint_interval(tmp_path):
    import re

    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "train", "--steps", "24", "--checkpoint-every", "5", "--out", out,
            "--image-every", "1000", "--batch-size", "4"]
    log = tmp_path / "progress.txt"

    def last_step():  # the progress bar prints "<step>/24" after each step
        steps = re.findall(r"(\d+)/24\b", log.read_text(errors="replace"))
        return int(steps[-1]) if steps else 0

    with open(log, "w") as f:
        proc = subprocess.Popen(args, cwd=ROOT, env=dict(ENV, PYTHONUNBUFFERED="1"), stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        # late in the fourth interval: ckpt-15 is 4 steps back, the one before 9
        while last_step() < 19:
            assert proc.poll() is None, f"training ended early ({proc.returncode}): {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no progress to step 19 in 300 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reached = last_step()  # complete now: the output is unbuffered and the process is gone
    saved = max(s for s, _ in list_checkpoints(out))
    assert saved % 5 == 0 and reached - 5 <= saved <= reached, (saved, reached)
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"(step {saved} of 24)" in res.stdout
    assert "done: 24 steps" in res.stdout
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


# --- distribution ----------------------------------------------------------------------

EQUIVALENCE = textwrap.dedent(
    """
    import os, sys, json
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from clade_tf import Generator, GeneratorConfig, MultiscaleDiscriminator, DiscriminatorConfig
    from clade_tf.data import pipeline, sources
    from clade_tf.gan import CladeGAN

    gcfg = GeneratorConfig(num_classes=6, image_height=32, image_width=32, ngf=8,
                           param_free_norm="syncbatch", use_instance=True)
    src = sources.SyntheticSource(6, 32, 32, length=8, seed=0)
    ds = pipeline.make_dataset(src, 4, 32, 32, seed=0, use_instance=True, num_steps=1)

    def make(strategy, init=None):
        with strategy.scope():
            keras.utils.set_random_seed(1)
            gan = CladeGAN(Generator(gcfg), MultiscaleDiscriminator(DiscriminatorConfig(ndf=8)))
            gan.compile(g_optimizer=keras.optimizers.SGD(1e-3), d_optimizer=keras.optimizers.SGD(1e-3))
            gan.build_all()
            if init is not None:
                for v, x in zip(gan.weights, init):
                    v.assign(x)
        return gan

    one = make(tf.distribute.get_strategy())
    init = [v.numpy() for v in one.weights]
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two = make(mirrored, init)
    h1 = one.fit(ds, epochs=1, steps_per_epoch=1, verbose=0).history
    h2 = two.fit(ds, epochs=1, steps_per_epoch=1, verbose=0).history
    def maxdiff(pairs):
        return max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in pairs)

    trainable = [i for i, v in enumerate(one.weights) if v.trainable]
    state = [i for i, v in enumerate(one.weights) if not v.trainable]
    w1 = [v.numpy() for v in one.weights]
    w2 = [v.numpy() for v in two.weights]
    diff = maxdiff((w1[i], w2[i]) for i in trainable)
    moved = maxdiff((w1[i], init[i]) for i in trainable)
    state_diff = maxdiff((w1[i], w2[i]) for i in state)
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "diff": diff, "moved": moved,
                      "state_diff": state_diff,
                      "one": {k: v[-1] for k, v in h1.items()}, "two": {k: v[-1] for k, v in h2.items()}}))
    """
)


@pytest.mark.slow
def test_one_mirrored_step_equals_one_single_device_step():
    res = subprocess.run([sys.executable, "-c", EQUIVALENCE], capture_output=True, text=True,
                         env=ENV, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["moved"] > 1e-4  # the step did something
    # trainable weights: SGD moves them by lr * g, linear in the gradient (unlike Adam's first
    # step: tests/test_pipeline.py), and two half-batch gradients all-reduced differ from one
    # full-batch gradient by float32 summation order only: 5e-6 of the largest move on an
    # AVX-512 host (the former absolute 1e-7 left a margin of 1.8). Relative to the move, which
    # the error scales with.
    assert out["diff"] < 1e-4 * out["moved"], out
    # non-trainable state (BatchNorm moving statistics computed by the synchronized
    # all-reduce of sums of squares, spectral-norm u/v): equal to float32 rounding of
    # 4096-term sums (2.5e-6 measured on AVX-512)
    assert out["state_diff"] < 3e-5, out
    # logged losses do not depend on the replica count
    for k, v in out["one"].items():
        assert out["two"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, out)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(out, ports, tmp_path, timeout=400):
    """Runs the two workers of a loopback cluster; `[(returncode, stdout, stderr)]`."""
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs, files = [], []
    for i in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        # open for the workers' lifetime, closed after they exit
        files.append((open(tmp_path / f"w{i}.out", "w+"), open(tmp_path / f"w{i}.err", "w+")))  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "train", "--strategy", "multiworker", "--steps", "3", "--batch-size", "4",
             "--checkpoint-every", "3", "--image-every", "1000", "--out", out],
            cwd=ROOT, env=env, stdout=files[i][0], stderr=files[i][1], text=True))
    try:
        deadline = time.monotonic() + timeout
        # a failed worker leaves its peer waiting in a collective: stop at the first failure
        while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):
            assert time.monotonic() < deadline, "the workers did not finish"
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results = []
    for p, (fo, fe) in zip(procs, files):
        fo.seek(0)
        fe.seek(0)
        results.append((p.returncode, fo.read(), fe.read()))
        fo.close()
        fe.close()
    return results


@pytest.mark.slow
def test_multiworker_on_loopback(tmp_path):
    import shutil

    out = str(tmp_path / "mw")
    for _ in range(3):
        # a port found free can be taken by another process before a worker binds it: new ports then
        results = run_workers(out, free_ports(2), tmp_path)
        if not any(rc and "Address already in use" in err for rc, _, err in results):
            break
        shutil.rmtree(out, ignore_errors=True)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert "done: 3 steps" in results[0][1]
    assert [s for s, _ in list_checkpoints(out)] == [3]
    assert sorted(os.listdir(out)) == [".lock", "ckpt-3", "config.json", "generator.keras", "logs", "samples",
                                       "samples_final.png"]
    assert RunDirectory(out).read_config().optim.steps == 3


# --- loss terms ------------------------------------------------------------------------

def tiny_gan(use_vae=False, vgg=None):
    from clade_tf import ConvEncoder, DiscriminatorConfig, Generator, MultiscaleDiscriminator
    from clade_tf.gan import CladeGAN

    gcfg = TINY.generator_config("clade", use_vae=use_vae, param_free_norm="batch")
    enc = ConvEncoder(ngf=4, z_dim=gcfg.z_dim, input_size=64) if use_vae else None
    gan = CladeGAN(Generator(gcfg), MultiscaleDiscriminator(DiscriminatorConfig(ndf=8)), enc, vgg)
    gan.compile(g_optimizer=keras.optimizers.Adam(1e-4, 0.0, 0.9),
                d_optimizer=keras.optimizers.Adam(4e-4, 0.0, 0.9))
    gan.build_all()
    return gan


def tiny_batch(n=2):
    from clade_tf.data import synthetic

    s = [synthetic.make_sample(0, i, TINY.num_classes, 32, 32) for i in range(n)]
    return {k: tf.constant(np.stack([x[k] for x in s])) for k in ("image", "label", "instance")}


def test_hinge_and_feature_matching_losses_match_their_definitions():
    gan = tiny_gan()
    batch = tiny_batch()
    g_terms, fake = gan.generator_losses(batch, training=False)
    seg = gan.semantics(batch)
    pf, pr = gan.discriminate(seg, fake, batch["image"], training=False)
    gan_loss = np.mean([-np.mean(p[-1].numpy().reshape(2, -1), axis=1) for p in pf], axis=0)
    np.testing.assert_allclose(g_terms["G_GAN"].numpy(), gan_loss, rtol=1e-4, atol=1e-6)
    feat = sum(np.mean(np.abs(f.numpy() - r.numpy()).reshape(2, -1), axis=1)
               for a, b in zip(pf, pr) for f, r in zip(a[:-1], b[:-1])) * 10.0 / 2
    np.testing.assert_allclose(g_terms["G_Feat"].numpy(), feat, rtol=1e-4)
    d_terms = gan.discriminator_losses(batch, training=False)
    real = np.mean([np.mean(np.maximum(1 - p[-1].numpy(), 0).reshape(2, -1), axis=1) for p in pr], axis=0)
    np.testing.assert_allclose(d_terms["D_Real"].numpy(), real, rtol=1e-4)
    logs = gan.test_step(batch)
    assert set(logs) == {"G_GAN", "G_Feat", "D_Fake", "D_Real", "G_total", "D_total"}


def test_vae_training_has_kld_and_updates_the_encoder():
    gan = tiny_gan(use_vae=True)
    batch = tiny_batch()
    e0 = [v.numpy().copy() for v in gan.encoder.trainable_variables]
    logs = tf.function(gan.train_step)(batch)
    assert "G_KLD" in logs and float(logs["G_KLD"]) >= 0  # ~0 at init: mu, logvar start near 0
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(e0, gan.encoder.trainable_variables))
    # make mu, logvar clearly non-zero, then check the official formula (summed over z)
    gan.encoder.fc_mu.bias.assign(np.full(gan.encoder.z_dim, 0.5, np.float32))
    gan.encoder.fc_var.bias.assign(np.full(gan.encoder.z_dim, -0.3, np.float32))
    mu, logvar = gan.encoder(batch["image"])
    kld = -0.5 * np.sum(1 + logvar.numpy() - mu.numpy() ** 2 - np.exp(logvar.numpy()), axis=1) * 0.05
    g_terms, _ = gan.generator_losses(batch, training=False)
    np.testing.assert_allclose(g_terms["G_KLD"].numpy(), kld, rtol=1e-4)


def test_vgg_loss_from_a_local_weights_file(tmp_path):
    from clade_tf.gan import VGG_WEIGHTS, load_vgg19

    path = str(tmp_path / "vgg19_notop.weights.h5")
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    vgg = load_vgg19(path, 32, 32)
    assert len(vgg.outputs) == 5 and not vgg.trainable_weights
    gan = tiny_gan(vgg=vgg)
    batch = tiny_batch()
    g_terms, fake = gan.generator_losses(batch, training=False)
    assert "G_VGG" in g_terms

    def feats(x):
        return [f.numpy() for f in vgg(keras.applications.vgg19.preprocess_input((x + 1.0) * 127.5))]

    ff, rf = feats(fake), feats(batch["image"])
    ref = sum(w * np.mean(np.abs(a - b).reshape(2, -1), axis=1) for w, a, b in zip(VGG_WEIGHTS, ff, rf)) * 10
    np.testing.assert_allclose(g_terms["G_VGG"].numpy(), ref, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="VGG19 weights file not found"):
        load_vgg19(str(tmp_path / "missing.h5"), 32, 32)


@pytest.mark.slow
def test_default_settings_learn_and_decay_start_reaches_the_run(tiny_preset, tmp_path):
    """`python -m train` with the default settings (synthetic data, losses, learning rates; the
    model and images smaller: 32x32, ngf 8, ndf 8, batch 4) learns: the fidelity rises from
    chance (1/6) to more than half of the pixels; measured 0.14 -> 0.69 in 100 steps. And
    `--decay-start` given on the command line decays both rates in the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.cli import main

    assert main(["--steps", "100", "--decay-start", "90", "--log-every", "1", "--image-every", "1000",
                 "--checkpoint-every", "1000", "--out", str(tmp_path / "r")]) == 0
    acc = EventAccumulator(str(tmp_path / "r" / "logs" / "train"), size_guidance={"tensors": 0})
    acc.Reload()

    def scalars(tag):
        return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}

    fidelity = scalars("synthetic/fidelity")
    assert fidelity[0] < 0.3 and fidelity[100] > 0.5, fidelity
    for tag, rate in (("lr/generator", 1e-4), ("lr/discriminator", 4e-4)):
        lr = scalars(tag)  # linear from the rate at step 90 to 0 at step 100
        assert lr[1] == lr[90] == pytest.approx(rate), (tag, lr)
        assert lr[95] == pytest.approx(rate / 2) and lr[100] == pytest.approx(0.0), (tag, lr)


def test_epochs_flag_sets_the_step_total(tiny_preset):
    from train.cli import build_parser, resolve

    cfg, _, _, _ = resolve(build_parser().parse_args(["--epochs", "3", "--synthetic-length", "40"]))
    assert cfg.optim.steps == 3 * (40 // 4)


# --- mixed precision -------------------------------------------------------------------

def mixed_batch():
    from clade_tf.data import synthetic

    s = [synthetic.make_sample(0, i, 6, 64, 64) for i in range(2)]
    return {k: tf.constant(np.stack([x[k] for x in s])) for k in ("image", "label", "instance")}


def dense_gradients(gan, batch):
    """Unscaled float32 gradients of G (+ nothing else) and D, and the loss terms, for one batch."""
    g_terms, g = gan.generator_gradients(batch)
    d_terms, d = gan.discriminator_gradients(batch)

    def unscale(grads, opt):
        scale = float(opt.dynamic_scale) if hasattr(opt, "dynamic_scale") else 1.0
        return [None if x is None else tf.convert_to_tensor(x).numpy().astype(np.float32) / scale for x in grads]

    terms = {k: float(tf.reduce_mean(v)) for k, v in {**g_terms, **d_terms}.items()}
    return unscale(g, gan.g_optimizer), unscale(d, gan.d_optimizer), terms


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_step_has_every_gradient_and_stays_close_to_float32(precision):
    from clade_tf.gan import build_gan

    # 64x64 (2x2 latent): at 1x1 the batch statistics of 2 samples make the norm's backward
    # amplify rounding by 1/sqrt(eps) in any precision
    preset = TINY.replace(image_height=64, image_width=64, load_size=64)
    keras.utils.set_random_seed(0)
    ref = build_gan(preset.run_config(optim=OptimConfig(batch_size=2)))
    gan = build_gan(preset.run_config(optim=OptimConfig(batch_size=2, mixed_precision=precision)))
    assert gan.generator.compute_dtype == precision and gan.generator.variable_dtype == "float32"
    assert {layer.compute_dtype for layer in gan.generator._flatten_layers() if layer.weights} == {precision}
    assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "float16")
    for a, b in zip(gan.weights, ref.weights):
        a.assign(b)
    batch = mixed_batch()
    g32, d32, t32 = dense_gradients(ref, batch)
    for _ in range(20):  # float16: the dynamic loss scale halves until nothing overflows
        g, d, terms = dense_gradients(gan, batch)
        if all(x is not None and np.isfinite(x).all() for x in g + d):
            break
        for opt in (gan.g_optimizer, gan.d_optimizer):
            opt.dynamic_scale.assign(opt.dynamic_scale / 2)
    names = [v.path for v in gan.g_variables + gan.discriminator.trainable_variables]
    assert all(x is not None for x in g + d), [n for n, x in zip(names, g + d) if x is None]
    assert all(np.isfinite(x).all() for x in g + d), [n for n, x in zip(names, g + d) if not np.isfinite(x).all()]
    for k, v in t32.items():  # the forward pass: every loss term within 2 %
        assert terms[k] == pytest.approx(v, rel=2e-2, abs=1e-3), (k, terms, t32)
    # the gradient direction (biases before a norm have a float32 gradient of ~0, left out);
    # feature matching is an L1 loss, so rounding flips the signs of small differences
    for mixed, full in ((g, g32), (d, d32)):
        keep = [i for i, n in enumerate(names[:len(mixed)] if mixed is g else names[len(g):])
                if not n.endswith("bias")]
        a = np.concatenate([mixed[i].ravel() for i in keep])
        b = np.concatenate([full[i].ravel() for i in keep])
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.95
    # and the optimizer step itself (unscaling, finiteness check) moves what float32 moves
    # (all but the head's instance-edge convs: no edge survives the downsampling to 2x2)
    def moved_by_steps(model):
        before = [v.numpy().copy() for v in model.g_variables]
        for _ in range(3):
            logs = model.train_step(batch)
        assert all(np.isfinite(float(v)) for v in logs.values())
        return {v.path for a, v in zip(before, model.g_variables) if not np.array_equal(a, v.numpy())}

    moved = moved_by_steps(gan)
    assert moved == moved_by_steps(ref) and len(moved) >= len(gan.g_variables) - 2


# --- failures -------------------------------------------------------------------------

def test_a_diverging_run_stops_naming_step_and_term_and_keeps_its_checkpoints(tiny_preset, tmp_path, capsys):
    from clade_tf.gan import NonFiniteError
    from export.__main__ import main as export_main

    run_quiet(tiny_cfg(steps=4), tmp_path / "r")
    before = {n: sorted(os.listdir(tmp_path / "r" / n)) for n in ("ckpt-2", "ckpt-4")}
    keras_file = (tmp_path / "r" / "generator.keras").read_bytes()
    with pytest.raises(NonFiniteError, match=r"^step 5: loss G_Feat.* is (inf|nan).*ckpt-4 kept"):
        run_quiet(tiny_cfg(steps=8, lambda_feat=1e38), tmp_path / "r")
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [2, 4]  # nothing rotated out
    assert {n: sorted(os.listdir(tmp_path / "r" / n)) for n in ("ckpt-2", "ckpt-4")} == before
    assert (tmp_path / "r" / "generator.keras").read_bytes() == keras_file
    assert not [n for n in os.listdir(tmp_path / "r") if n.startswith(".tmp")]
    # the checkpoint writer refuses non-finite weights on its own, and export refuses them too
    from clade_tf.gan import build_gan

    gan = build_gan(tiny_cfg())
    gan.generator.conv_img.bias.assign(np.full(3, np.nan, np.float32))
    with pytest.raises(NonFiniteError, match=r"step 9: 1 weights hold NaN/Inf \(e\.g\. generator/conv_img/bias\)"):
        RunDirectory(tmp_path / "r").save_checkpoint(gan, 9)
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [2, 4]
    gan.generator.save_weights(str(tmp_path / "nan.weights.h5"))
    assert export_main(["--weights", str(tmp_path / "nan.weights.h5"), "--preset", "synthetic",
                        "--out", str(tmp_path / "e"), "--formats", "tflite-fp32"]) == 2
    assert "weights hold NaN/Inf (1 variables, e.g. generator/conv_img/bias)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e")


def test_cli_exits_non_zero_on_divergence(tiny_preset, tmp_path, capsys):
    from train.cli import main

    code = main(["--steps", "3", "--batch-size", "4", "--synthetic-length", "8", "--lambda-feat", "1e38",
                 "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: step 1: loss G_Feat is inf"), err[-2000:]
    assert errors[0].endswith("no checkpoint written")
    # nothing was saved, so the run directory this call created is removed again
    assert "done:" not in out and not os.path.exists(tmp_path / "r")


def test_run_config_round_trip_legacy_records_and_mismatches():
    import dataclasses

    from clade_tf.config import ConfigError, RunConfig

    cfg = presets.get_preset("cityscapes").run_config("clade-icpe", dataroot="/data/cs", seed=3,
                                                      optim=OptimConfig(batch_size=2, steps=10, decay_start=5))
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # a config.json of the earlier flat layout (preset + train sections) still reads
    preset = presets.get_preset("cityscapes")
    legacy = {"preset": dataclasses.asdict(preset), "generator": cfg.generator.to_dict(),
              "discriminator": cfg.discriminator.to_dict(),
              "train": {"dataset": "cityscapes", "dataroot": "/data/cs", "norm": "clade-icpe", "batch_size": 2,
                        "steps": 10, "out": "runs/x", "seed": 3, "decay_start": 5, "strategy": "auto",
                        "mixed_precision": False, "label_nc": None, "use_vae": False}}
    assert RunConfig.from_dict(legacy) == cfg
    with pytest.raises(ConfigError, match=r"the generator has 3 classes, the data 35 \(label_nc 35\)"):
        RunConfig(data=cfg.data, generator=dataclasses.replace(cfg.generator, num_classes=3))
    with pytest.raises(ConfigError, match=r"RunConfig: unknown keys \['extra'\]"):
        RunConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_tensorboard_hint_points_at_the_run_not_its_parent():
    from train.run import tensorboard_hint

    assert tensorboard_hint("/x/run").endswith(" -m tensorboard.main --logdir /x/run")
    assert tensorboard_hint("runs/synthetic-clade/").endswith(" --logdir runs/synthetic-clade")


def test_synthetic_scenes_training_prints_and_logs_its_miou(tmp_path, monkeypatch, capsys):
    """The shipped segmenter's mIoU of the fixed sample batch, at the start and the end, as
    the synthetic dataset's fidelity; on the real images of that batch it is high, so the
    number compares the generated images with their label maps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clade_tf.data import sources
    from train.callbacks import sample_quality
    from train.cli import main
    from train.run import NUM_SAMPLE_IMAGES

    tiny = presets.SYNTHETIC_SCENES.replace(ngf=8, ndf=8, batch_size=4)
    monkeypatch.setitem(presets.PRESETS, "synthetic-scenes", tiny)
    out = tmp_path / "r"
    assert main(["--dataset", "synthetic-scenes", "--steps", "1", "--synthetic-length", "8",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    acc = EventAccumulator(str(out / "logs" / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    logged = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("synthetic_scenes/miou")}
    assert sorted(logged) == [0, 1]
    assert f"synthetic-scenes mIoU (shipped segmenter): {round(logged[0], 3)} at init -> {logged[1]:.3f} now" \
        in printed, printed
    assert "watch it: " in printed and f"--logdir {out}\n" in printed
    cfg = tiny.run_config("clade", data={"synthetic_length": 8})
    batch = sources.fixed_batch(cfg.data, cfg.generator, cfg.seed, NUM_SAMPLE_IMAGES)
    quality = sample_quality("synthetic-scenes", cfg.generator.num_classes)
    assert quality(batch["image"], batch) > 0.6 > logged[1]
