"""The data path for fast hosts: clean exit, the prepared cache, XLA steps."""

import subprocess
import sys
import textwrap

import pytest

EARLY_EXIT = textwrap.dedent("""
    from clade_tf.data import pipeline, sources
    src = sources.SyntheticSource(6, 32, 32, length=256, seed=0, use_dist=True)
    it = iter(pipeline.make_dataset(src, 4, 32, 32, use_instance=True, use_dist=True))
    for _ in range(3):
        next(it)
    print("read", flush=True)
""")


@pytest.mark.slow
def test_leaving_a_script_mid_stream_does_not_hang():
    """Before the fix the interpreter hung at exit in the iterator's destructor."""
    out = subprocess.run([sys.executable, "-c", EARLY_EXIT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "read" in out.stdout, out.stderr[-1500:]


def _one_step(cfg, weights, batch):
    import keras
    import numpy as np
    import tensorflow as tf

    from clade_tf.gan import build_gan

    keras.utils.set_random_seed(0)
    gan = build_gan(cfg)
    if weights is not None:
        gan.generator.set_weights(weights[0])
        gan.discriminator.set_weights(weights[1])
    before = (gan.generator.get_weights(), gan.discriminator.get_weights())
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    hist = gan.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    logs = {k: float(np.ravel(v)[-1]) for k, v in hist.history.items()}
    return before, logs, gan.generator.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["clade"])  # spade passes too (README), but its XLA compile costs CI minutes
def test_xla_step_equals_the_plain_step(mode):
    """--jit-compile: one XLA-compiled GAN step (spectral norm's power iteration, SyncBN,
    both Adam optimizers) gives the losses and weights of the plain step."""
    import dataclasses

    import numpy as np

    from clade_tf.presets import get_preset

    cfg = get_preset("synthetic").run_config(mode)
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, image_height=32, image_width=32,
                                                                 ngf=8))
    rng = np.random.default_rng(0)
    label = np.repeat(np.repeat(rng.integers(0, 6, (4, 4, 4)), 8, 1), 8, 2).astype(np.int32)
    batch = {"label": label, "instance": label.copy(),
             "image": rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)}
    start, plain_logs, plain = _one_step(cfg, None, batch)
    xla_cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, jit_compile=True))
    _, xla_logs, xla = _one_step(xla_cfg, start, batch)
    assert set(plain_logs) == set(xla_logs)
    for k in plain_logs:
        assert xla_logs[k] == pytest.approx(plain_logs[k], rel=1e-4, abs=1e-5), k
    moved = max(np.abs(a - b).max() for a, b in zip(plain, start[0]))
    diff = max(np.abs(a - b).max() for a, b in zip(plain, xla))
    assert moved > 1e-5 and diff < 1e-3 * moved, (moved, diff)


@pytest.fixture(scope="module")
def ade_folder(tmp_path_factory):
    from benchmarks.pipeline import make_ade20k_like

    return make_ade20k_like(str(tmp_path_factory.mktemp("ade")), 6, width=96, height=72, regions=25)


@pytest.fixture(scope="module")
def ade_cache(ade_folder, tmp_path_factory):
    from clade_tf.data.cache import prepare
    from clade_tf.presets import get_preset

    out = str(tmp_path_factory.mktemp("c") / "cache")
    prepare(get_preset("ade20k").data_config(dataroot=ade_folder), (256, 256), out, False, True)
    return out


def _batches(data, mode, start_step, steps, seed=3):
    from clade_tf.data import sources
    from clade_tf.presets import get_preset

    gen = get_preset("ade20k").generator_config(mode)
    src = sources.make_source(data, gen, seed)
    return src, [{k: v.numpy() for k, v in b.items()} for b in
                 sources.make_training_dataset(src, gen, 2, seed, start_step=start_step, num_steps=steps)]


@pytest.mark.parametrize("mode", ["clade", "clade-icpe"])
def test_cache_gives_the_batches_of_the_raw_files(ade_folder, ade_cache, mode):
    """Same seed, same batches, bit for bit, across epochs and from a resumed step."""
    import dataclasses

    import numpy as np

    from clade_tf.data.sources import CacheSource
    from clade_tf.presets import get_preset

    data = get_preset("ade20k").data_config(dataroot=ade_folder)
    raw_src, raw = _batches(data, mode, 0, 7)  # 6 samples, batch 2: 3 steps per epoch, into the third epoch
    cache_src, cached = _batches(dataclasses.replace(data, cache=ade_cache), mode, 0, 7)
    assert isinstance(cache_src, CacheSource) and not isinstance(raw_src, CacheSource)
    assert len(raw) == len(cached) == 7
    for a, b in zip(raw, cached):
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _, resumed = _batches(dataclasses.replace(data, cache=ade_cache), mode, 4, 2)
    for a, b in zip(raw[4:6], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert any(r["image"].std() > 0.1 for r in raw)  # real content, not an empty crop
    rng = np.random.default_rng(5)
    for k, v in raw_src.load(2, rng).items():
        np.testing.assert_array_equal(v, cache_src.load(2, np.random.default_rng(5))[k], err_msg=k)


def _copy_cache(src, tmp_path):
    import shutil

    dst = str(tmp_path / "copy")
    shutil.copytree(src, dst)
    return dst


def _open(cache, data_dir, **kw):
    from clade_tf.data.sources import CacheSource
    from clade_tf.presets import get_preset

    data = get_preset("ade20k").data_config(dataroot=data_dir, **kw)
    return CacheSource(cache, data, (256, 256), False, True)


def test_changed_cache_is_refused(ade_folder, ade_cache, tmp_path):
    import os

    from clade_tf.data.cache import CacheError

    _open(ade_cache, ade_folder)
    bad = _copy_cache(ade_cache, tmp_path)
    f = os.path.join(bad, "samples", "0000003.bin")
    with open(f, "r+b") as fh:  # same size, one byte changed
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(CacheError, match=r"0000003\.bin changed since it was prepared"):
        _open(bad, ade_folder)
    with open(f, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(CacheError, match=r"0000003\.bin has 10 bytes, expected \d+ \(damaged\)"):
        _open(bad, ade_folder)
    os.remove(os.path.join(bad, "manifest.json"))
    with pytest.raises(CacheError, match="no manifest.json"):
        _open(bad, ade_folder)
    with pytest.raises(CacheError, match="prepared with load_size 286 \\(the run: 300\\)"):
        _open(ade_cache, ade_folder, load_size=300)


def test_cache_refuses_changed_sources_and_missing_maps(ade_folder, tmp_path):
    import os
    import shutil

    from clade_tf.data.cache import CacheError, prepare
    from clade_tf.data.sources import CacheSource
    from clade_tf.presets import get_preset

    folder = str(tmp_path / "data")
    shutil.copytree(ade_folder, folder)
    data = get_preset("ade20k").data_config(dataroot=folder)
    cache = str(tmp_path / "cache")
    prepare(data, (256, 256), cache, False, False, workers=2)
    with pytest.raises(CacheError, match="has no dist maps.*--icpe"):
        CacheSource(cache, data, (256, 256), False, True)
    with pytest.raises(CacheError, match="already exists"):
        prepare(data, (256, 256), cache, False, False)
    assert sorted(os.listdir(tmp_path)) == ["cache", "data"]  # no temporary folder left
    label = os.path.join(folder, "annotations", "training", "ADE_train_00000002.png")
    os.utime(label, ns=(1, 1))
    with pytest.raises(CacheError, match="ADE_train_00000002.png changed since it was prepared"):
        CacheSource(cache, data, (256, 256), False, False)


def test_prepare_cli_errors_and_train_flag(tmp_path, ade_folder, capsys):
    from train import prepare
    from train.cli import resolve

    assert prepare.main(["--dataset", "ade20k", "--dataroot", str(tmp_path / "none"), "--out",
                         str(tmp_path / "c")]) == 1
    assert "--dataroot" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert prepare.main(["--dataset", "ade20k", "--dataroot", ade_folder, "--out", str(tmp_path / "file")]) == 1
    assert "is a file" in capsys.readouterr().err
    assert prepare.main(["--dataset", "ade20k", "--dataroot", ade_folder, "--out", str(tmp_path / "ok")]) == 0
    assert "wrote" in capsys.readouterr().out
    from train.cli import build_parser
    from train.run import UsageError

    with pytest.raises(UsageError, match="nothing to prepare"):
        resolve(build_parser().parse_args(["--cache", str(tmp_path / "ok")]))
    with pytest.raises(UsageError, match="--cache .*not found"):
        resolve(build_parser().parse_args(["--dataset", "ade20k", "--dataroot", ade_folder, "--steps", "1",
                                           "--cache", str(tmp_path / "missing")]))


def test_trainable_upsampling_has_the_gradient_of_the_resize():
    """The generator's training-time 2x upsampling (XLA-compilable gradient) gives the values
    and the gradient of TensorFlow's nearest resize (ResizeNearestNeighborGrad)."""
    import numpy as np
    import tensorflow as tf

    from clade_tf.networks.generator import upsample2x, upsample2x_trainable

    x = tf.constant(np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32))
    w = tf.constant(np.random.default_rng(1).standard_normal((2, 6, 10, 4)).astype(np.float32))
    grads = []
    for fn in (upsample2x, upsample2x_trainable):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * w)
        grads.append((y.numpy(), tape.gradient(loss, x).numpy()))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-6)
