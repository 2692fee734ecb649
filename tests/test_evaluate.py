"""`python -m evaluate` and training's `--eval-every`: FID / KID / mIoU end to end.

The FID Inception weights are the deterministic stand-ins of `fid_reference` (the real
file is not available here), written as a `.pth` the way pytorch-fid's file is.
"""

import json
import os

import numpy as np
import pytest

import fid_reference
from clade_tf import presets
from clade_tf.config import EvalConfig, MonitorConfig, OptimConfig
from clade_tf.rundir import RunDirectory
from conftest import TINY

HERE = os.path.dirname(os.path.abspath(__file__))
REF = dict(np.load(os.path.join(HERE, "fixtures", "fid_inception", "reference.npz")))
SHAPES = json.loads(str(REF["state_dict_shapes"]))
CONV_SHAPES = {k.removesuffix(".conv.weight"): tuple(s) for k, s in SHAPES.items() if k.endswith(".conv.weight")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    return fid_reference.write_pth(path, fid_reference.fid_state_dict(CONV_SHAPES), legacy=True)


def write_images(folder, n, seed, size=32):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth images (a few blobs of colour), not white noise
        small = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(os.path.join(folder, f"{i}.png"))
    return str(folder)


def errors(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_fid_between_folders_and_statistics_files(weights, tmp_path, capsys):
    from clade_tf.metrics import load_stats
    from evaluate.__main__ import main

    a = write_images(tmp_path / "a", 6, seed=1)
    b = write_images(tmp_path / "b", 6, seed=2)
    assert main(["fid", a, b, "--inception-weights", weights, "--json", "--batch-size", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"fid", "kid_mean", "kid_std", "n_a", "n_b"} and out["n_a"] == out["n_b"] == 6
    assert out["fid"] > 1e-3 and out["kid_mean"] is not None
    # a set against itself: 0 up to the square root's precision
    assert main(["fid", a, a, "--inception-weights", weights, "--json"]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(same["fid"]) < 1e-3 * out["fid"]
    # statistics files give the same FID as the folders they were made from
    stats = str(tmp_path / "a.npz")
    assert main(["stats", a, "--out", stats, "--inception-weights", weights]) == 0
    mu, sigma = load_stats(stats)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert main(["fid", stats, b, "--inception-weights", weights, "--json"]) == 0
    via_stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert via_stats["fid"] == pytest.approx(out["fid"], rel=1e-6) and via_stats["kid_mean"] is None
    # --size resizes first (as CLADE's real statistics): other statistics
    assert main(["stats", a, "--out", str(tmp_path / "a16.npz"), "--size", "16", "16",
                 "--inception-weights", weights]) == 0
    assert not np.allclose(load_stats(str(tmp_path / "a16.npz"))[0], mu)


@pytest.mark.parametrize("case", ["missing weights", "not the inception file", "empty folder", "bad stats"])
def test_evaluate_errors_are_one_line(case, weights, tmp_path, capsys):
    from evaluate.__main__ import main

    a = write_images(tmp_path / "a", 3, seed=1)
    w = weights
    args_b = a
    if case == "missing weights":
        w = str(tmp_path / "nowhere.pth")
        expected = "pytorch-fid"
    elif case == "not the inception file":
        w = fid_reference.write_pth(tmp_path / "other.pth", {"conv.weight": np.zeros((2, 2), np.float32)})
        expected = "other.pth"
    elif case == "empty folder":
        os.makedirs(tmp_path / "empty")
        args_b = str(tmp_path / "empty")
        expected = "no images"
    else:
        np.savez(tmp_path / "bad.npz", mu=np.zeros(5), sigma=np.eye(5))
        args_b = str(tmp_path / "bad.npz")
        expected = "bad.npz"
    assert main(["fid", a, args_b, "--inception-weights", w]) == 2
    err = capsys.readouterr().err
    assert len(errors(err)) == 1 and expected in errors(err)[0] and "Traceback" not in err, err


def tiny_cfg(steps=2, evaluation=None):
    return TINY.run_config("clade", optim=OptimConfig(batch_size=4, steps=steps),
                           monitor=MonitorConfig(checkpoint_every=1, log_every=1, image_every=100),
                           data={"synthetic_length": 16}, evaluation=evaluation)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from clade_tf.gan import build_gan

    run = RunDirectory(tmp_path_factory.mktemp("run") / "r")
    run.write_config(tiny_cfg())
    run.save_checkpoint(build_gan(tiny_cfg()), 1)
    return run


def constant_segmenter(path, num_classes, size=32):
    """A segmenter that predicts class 0 everywhere (its mIoU follows from the labels alone)."""
    import keras

    inp = keras.Input((size, size, 3), name="image")
    out = keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant([1.0] + [0.0] * (num_classes - 1)))(inp)
    keras.Model(inp, out).export(str(path), verbose=False)
    return str(path)


def test_evaluate_run_writes_metrics_with_provenance_and_the_segmenter_scores(weights, tiny_run, tmp_path,
                                                                              monkeypatch, capsys):
    from evaluate.__main__ import main

    monkeypatch.setitem(presets.PRESETS, "synthetic", TINY)
    cfg = tiny_run.read_config()
    seg = constant_segmenter(tmp_path / "seg", cfg.generator.num_classes)
    out = tmp_path / "ev"
    assert main(["run", "--run", tiny_run.path, "--inception-weights", weights, "--images", "6",
                 "--real-images", "6", "--segmenter", seg, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 6 and m["fid"] > 0 and m["kid_mean"] is not None
    assert m["generator"]["weights"].endswith("ckpt-1/generator.weights.h5") and len(m["generator"]["sha256"]) == 64
    assert m["inception_weights"]["sha256"] and m["segmenter"]["path"] == seg
    check_constant_segmenter_scores(m, cfg, 6)
    assert (out / "samples.png").is_file()
    # an evaluation replaces an evaluation only with --force
    assert main(["run", "--run", tiny_run.path, "--inception-weights", weights, "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def check_constant_segmenter_scores(m, cfg, n):
    """The constant segmenter's scores on the first `n` validation images: pixel accuracy is the
    share of class-0 pixels, the IoU of class 0 that share too, every other IoU 0 or undefined."""
    from clade_tf.data import sources

    source = sources.make_source(cfg.data, cfg.generator, cfg.seed, phase="val", augment=False)
    labels = np.stack([source.load(i, np.random.default_rng(0))["label"] for i in range(n)])
    share = float((labels == 0).mean())
    assert 0 < share < 1  # else the check below could not tell a right count from a wrong one
    assert m["pixel_accuracy"] == pytest.approx(share)
    assert m["iou"][0] == pytest.approx(share) and all(v in (0.0, None) for v in m["iou"][1:])


def test_evaluate_run_with_a_segmenter_needs_no_inception(tiny_run, tmp_path, monkeypatch, capsys):
    """mIoU alone: FID and KID are skipped, and the output and metrics.json say why."""
    from evaluate.__main__ import main

    monkeypatch.setitem(presets.PRESETS, "synthetic", TINY)
    cfg = tiny_run.read_config()
    seg = constant_segmenter(tmp_path / "seg", cfg.generator.num_classes)
    out = tmp_path / "ev"
    assert main(["run", "--run", tiny_run.path, "--images", "6", "--segmenter", seg, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FID and KID skipped: no Inception weights named (--inception-weights)" in printed
    assert "mIoU" in printed and "FID " not in printed.replace("FID and KID skipped", "")
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 6 and m["fid"] is None and m["kid_mean"] is None
    assert m["skipped"]["fid"].startswith("no Inception weights named")
    assert m["inception_weights"] is None and m["real_stats"] is None and m["segmenter"]["path"] == seg
    check_constant_segmenter_scores(m, cfg, 6)
    assert (out / "samples.png").is_file()


@pytest.mark.parametrize("case", ["neither", "real stats without the inception"])
def test_evaluate_run_without_anything_to_score_is_one_line(case, tiny_run, tmp_path, capsys):
    from evaluate.__main__ import main

    argv = ["run", "--run", tiny_run.path, "--out", str(tmp_path / "ev")]
    if case == "neither":
        expected = "nothing to score: give --inception-weights FILE (FID / KID), --segmenter FILE (mIoU), or both"
    else:
        np.savez(tmp_path / "real.npz", mu=np.zeros(2048), sigma=np.eye(2048))
        argv += ["--real-stats", str(tmp_path / "real.npz"), "--segmenter", str(tmp_path / "seg")]
        expected = f"--real-stats {tmp_path / 'real.npz'}: FID statistics need --inception-weights FILE too"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert errors(err) == [f"error: {expected}"] and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "ev")


class StubEvaluator:
    def __init__(self, fids):
        self.fids = list(fids)

    def evaluate(self, generate):
        return {"fid": self.fids.pop(0), "kid_mean": 0.1, "images": 4}, None


def test_the_best_score_survives_a_restart(tiny_run, tmp_path):
    """A restarted run compares with the best FID saved before, not with nothing."""
    import shutil

    from clade_tf.gan import build_gan
    from train.callbacks import RunMonitor

    run = RunDirectory(tmp_path / "r")
    shutil.copytree(tiny_run.path, run.path)
    gan = build_gan(tiny_cfg())

    def monitor(fids):
        return RunMonitor(run, gan, 1, 10, None, None, 6, False, MonitorConfig(), evaluator=StubEvaluator(fids),
                          eval_every=1)

    first = monitor([5.0, 7.0])
    first.evaluate_metrics(2)
    first.evaluate_metrics(3)
    assert run.best_score()["step"] == 2 and run.best_score()["fid"] == 5.0
    restarted = monitor([6.0, 4.0])  # a new process: the best so far comes from best/score.json
    assert restarted.best_fid == 5.0
    restarted.evaluate_metrics(4)
    assert run.best_score()["step"] == 2
    restarted.evaluate_metrics(5)
    assert run.best_score() == {"step": 5, "fid": 4.0, "kid_mean": 0.1, "images": 4}
    assert [n for n in os.listdir(run.path) if "best" in n] == ["best"]


def test_training_with_eval_every_logs_scores_and_keeps_the_best(weights, tmp_path, monkeypatch):
    import tensorflow as tf

    from train.run import run

    monkeypatch.setitem(presets.PRESETS, "synthetic", TINY)
    evaluation = EvalConfig(every=1, images=4, real_images=4, inception_weights=weights, batch_size=4)
    summary = run(tiny_cfg(steps=2, evaluation=evaluation), str(tmp_path / "r"), verbose=0)
    best = RunDirectory(tmp_path / "r").best_score()
    fids = {}
    logdir = tmp_path / "r" / "logs" / "train"
    for name in os.listdir(logdir):
        for event in tf.compat.v1.train.summary_iterator(str(logdir / name)):
            for v in event.summary.value:
                if v.tag == "eval/fid":
                    fids[event.step] = float(tf.make_ndarray(v.tensor))
    assert sorted(fids) == [1, 2]
    step = min(fids, key=fids.get)
    assert best["step"] == step and best["fid"] == pytest.approx(fids[step]) and summary["best_fid"] == best["fid"]
    assert os.path.isfile(tmp_path / "r" / "best" / "generator.weights.h5")


@pytest.mark.parametrize("case", ["missing", "a file"])
def test_evaluate_run_names_a_missing_or_file_run(case, tmp_path, capsys):
    """A typo in --run says "not found", a file says so: not "no config.json"."""
    from evaluate.__main__ import main

    run = tmp_path / "nope"
    if case == "a file":
        run.write_text("x")
    seg = str(tmp_path / "seg")
    assert main(["run", "--run", str(run), "--segmenter", seg, "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    what = "not found" if case == "missing" else "is a file, not a run directory"
    assert errors(err) == [(f"error: {run}: {what} (expected a run directory of python -m train "
                            "or export.from_torch)")], err
    assert not os.path.exists(tmp_path / "ev")
