"""The data path for fast hosts: clean exit, the prepared cache, XLA steps."""

import subprocess
import sys
import textwrap

import numpy as np
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


# Adam's first step is lr * g / (|g| + epsilon): lr * sign(g) wherever |g| >> epsilon. A gradient
# element that is zero up to rounding (a conv bias before a normalization, a kernel entry whose
# contributions cancel) then moves by +-lr, and the order of floating-point operations, which
# differs between XLA and the plain kernels and between AVX2 and AVX-512 builds of them, picks
# the sign: on an AVX-512 host ~1e-4 of the generator's kernel entries took opposite full steps,
# and the power iterations and the discriminator step, which read the updated generator,
# inherited it. With an epsilon far above every |g| (the largest here is ~0.03) the step is
# ~lr * g / epsilon, close to linear in the gradient: the two steps then differ by what rounding
# does to the gradients only.
_LINEAR_ADAM_EPSILON = 1.0


def _state(gan):
    """Every variable of both networks, by (network, kind): trainable, BatchNorm statistics,
    spectral norm's power-iteration vectors u and v."""
    state = {}
    for net in (gan.generator, gan.discriminator):
        for v in net.weights:
            leaf = v.path.rsplit("/", 1)[-1]
            kind = "trainable" if v.trainable else "sn" if leaf in ("sn_u", "sn_v") else "bn"
            state.setdefault((net.name, kind), []).append(v.numpy().ravel())
    return {k: np.concatenate(v) for k, v in state.items()}


def _one_step(cfg, weights, batch):
    import keras
    import tensorflow as tf

    from clade_tf.gan import build_gan

    keras.utils.set_random_seed(0)
    gan = build_gan(cfg)
    for opt in (gan.g_optimizer, gan.d_optimizer):
        opt.epsilon = _LINEAR_ADAM_EPSILON  # read when the step is traced, in fit
    if weights is not None:
        gan.generator.set_weights(weights[0])
        gan.discriminator.set_weights(weights[1])
    weights = (gan.generator.get_weights(), gan.discriminator.get_weights())
    before = _state(gan)
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    hist = gan.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    logs = {k: float(np.ravel(v)[-1]) for k, v in hist.history.items()}
    return weights, before, logs, _state(gan)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["clade"])  # spade passes too (docs/training.md), but its XLA compile costs CI minutes
def test_xla_step_equals_the_plain_step(mode):
    """--jit-compile: one XLA-compiled GAN step (spectral norm's power iteration, SyncBN,
    both Adam optimizers) gives the losses and the weights of the plain step."""
    import dataclasses

    from clade_tf.presets import get_preset

    cfg = get_preset("synthetic").run_config(mode)
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, image_height=32, image_width=32,
                                                                 ngf=8))
    rng = np.random.default_rng(0)
    label = np.repeat(np.repeat(rng.integers(0, 6, (4, 4, 4)), 8, 1), 8, 2).astype(np.int32)
    batch = {"label": label, "instance": label.copy(),
             "image": rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)}
    weights, start, plain_logs, plain = _one_step(cfg, None, batch)
    xla_cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, jit_compile=True))
    _, xla_start, xla_logs, xla = _one_step(xla_cfg, weights, batch)
    # A loss is a mean of n <= 4*32*32*3 float32 terms: the summation order moves it by
    # ~sqrt(n) * 2**-24 ~ 7e-6 relative (1e-7 measured); a step computing something else by far more.
    assert set(plain_logs) == set(xla_logs)
    for k in plain_logs:
        assert xla_logs[k] == pytest.approx(plain_logs[k], rel=1e-4, abs=1e-5), k
    # Each group of variables as one update vector, ||xla - plain|| against ||plain - start||:
    # rounding bounds a sum's error relative to the sum of its terms' magnitudes, so an entry
    # whose update is a near-cancellation has a large relative error but little weight in the
    # norm. The discriminator's gradients are the least well-conditioned (its fake input is the
    # near-zero image of a gain-0.02 generator; LeakyReLU pre-activations within rounding of 0
    # take either slope): rounding moved one kernel's update by ~5% of its largest entry and the
    # discriminator's whole update by 0.3% (AVX-512 host; the generator's 0.05%, BatchNorm
    # statistics and u, v < 1e-5). A missing, doubled or rescaled step, another gradient, or a
    # power iteration not applied is off by the whole update.
    assert set(plain) == set(xla) == set(start)
    assert {("generator", "trainable"), ("generator", "sn"), ("generator", "bn"), ("discriminator", "trainable"),
            ("discriminator", "sn")} <= set(plain), set(plain)
    for key in plain:
        np.testing.assert_array_equal(start[key], xla_start[key], err_msg=str(key))
        moved = np.linalg.norm(plain[key] - start[key])
        diff = np.linalg.norm(xla[key] - plain[key])
        assert moved > 0 and diff < 2e-2 * moved, (key, moved, diff)
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
