"""Network-level tests: generator, discriminator, encoder, presets, profile."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from clade_tf import (
    ConvEncoder,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    MultiscaleDiscriminator,
    get_preset,
)
from clade_tf.networks.discriminator import avg_pool_3x3_s2
from clade_tf.profiling import count_params, generator_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG_SEED = 1  # tests/conftest.py resets RNG to it before each test
RNG = np.random.default_rng(RNG_SEED)


def small_config(**kw):
    base = dict(num_classes=5, image_height=64, image_width=32, ngf=8, param_free_norm="batch",
                use_instance=True)
    base.update(kw)
    return GeneratorConfig(**base)


def inputs_for(cfg, n=2):
    h, w = cfg.image_height, cfg.image_width
    out = {"label": tf.constant(RNG.integers(0, cfg.num_classes, (n, h, w)), tf.int32)}
    if cfg.use_instance:
        out["instance"] = tf.constant(RNG.integers(0, 4, (n, h, w)), tf.int32)
    if cfg.norm_mode == "clade-icpe":
        out["dist"] = tf.constant(RNG.uniform(-1, 1, (n, h, w, 2)), tf.float32)
    if cfg.use_vae:
        out["z"] = tf.constant(RNG.standard_normal((n, cfg.z_dim)), tf.float32)
    return out


ALL_MODES = ["clade", "clade-icpe", "spade", "none"]


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("vae", [False, True])
def test_generator_forward_and_keras_round_trip(mode, vae, tmp_path):
    cfg = small_config(norm_mode=mode, use_vae=vae, num_upsampling_layers="normal")
    g = Generator(cfg)
    inp = inputs_for(cfg)
    y = g(inp, training=True)
    assert y.shape == (2, 64, 32, 3)
    assert float(tf.reduce_max(tf.abs(y))) <= 1.0
    ref = g(inp, training=False).numpy()
    path = str(tmp_path / "g.keras")
    g.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.config == cfg
    np.testing.assert_allclose(loaded(inp, training=False).numpy(), ref, atol=1e-6)
    # weights-only round trip into a freshly built model
    wpath = str(tmp_path / "g.weights.h5")
    g.save_weights(wpath)
    fresh = Generator(cfg)
    fresh.build()
    fresh.load_weights(wpath)
    np.testing.assert_allclose(fresh.features(inp).numpy(), g.features(inp).numpy(), atol=1e-5)


@pytest.mark.parametrize("ups,latent", [("normal", (2, 1)), ("more", (1, 1)), ("most", (1, 1))])
def test_generator_upsampling_variants(ups, latent):
    size = {"normal": (64, 32), "more": (64, 64), "most": (128, 128)}[ups]
    cfg = small_config(num_upsampling_layers=ups, image_height=size[0], image_width=size[1],
                       use_instance=False)
    g = Generator(cfg)
    assert (g.sh, g.sw) == latent
    y = g(inputs_for(cfg, 1))
    assert y.shape == (1,) + size + (3,)
    names = [b.name for b in g.blocks]
    assert names[-1] == ("up_4" if ups == "most" else "up_3")
    assert g.conv_img.kernel.shape[2] == (cfg.ngf // 2 if ups == "most" else cfg.ngf)


def test_vae_generator_samples_z_when_absent_and_uses_it_when_given():
    cfg = small_config(use_vae=True, use_instance=False)
    g = Generator(cfg)
    inp = inputs_for(cfg, 2)
    a = g(inp).numpy()
    np.testing.assert_allclose(g(inp).numpy(), a, atol=1e-6)  # given z: deterministic
    no_z = {"label": inp["label"]}
    assert not np.allclose(g(no_z).numpy(), g(no_z).numpy())  # sampled z
    assert g.fc.kernel.shape == (256, 16 * 8 * g.sh * g.sw)


def test_vae_dense_output_is_read_in_pytorch_nchw_order():
    cfg = small_config(use_vae=True, use_instance=False, norm_mode="none")
    g = Generator(cfg)
    g.build()
    z = tf.constant(RNG.standard_normal((1, 256)), tf.float32)
    flat = g.fc(z).numpy()
    c = 16 * cfg.ngf
    nchw = flat.reshape(1, c, g.sh, g.sw)
    captured = {}
    orig = g.blocks[0].call

    def spy(x, cond, training=None):
        captured["x"] = x.numpy()
        return orig(x, cond, training=training)

    g.blocks[0].call = spy
    g({"label": tf.zeros([1, 64, 32], tf.int32), "z": z})
    np.testing.assert_allclose(captured["x"], nchw.transpose(0, 2, 3, 1), atol=1e-6)


def test_generator_missing_inputs_are_named():
    g = Generator(small_config(norm_mode="clade-icpe"))
    with pytest.raises(ValueError, match=r"use_instance=True\) needs inputs\['instance'\]"):
        g({"label": tf.zeros([1, 64, 32], tf.int32)})
    with pytest.raises(ValueError, match=r"clade-icpe'\) needs inputs\['dist'\]"):
        g({"label": tf.zeros([1, 64, 32], tf.int32), "instance": tf.zeros([1, 64, 32], tf.int32)})
    with pytest.raises(TypeError, match="must be a dict"):
        g(tf.zeros([1, 64, 32], tf.int32))


@pytest.mark.parametrize("bad", [5, -1])
def test_generator_rejects_out_of_range_labels_eager_and_graph(bad):
    cfg = small_config(use_instance=False)
    g = Generator(cfg)
    lab = np.zeros((1, 64, 32), np.int32)
    lab[0, 40, 7] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_classes=5"):
        g({"label": tf.constant(lab)})
    fn = tf.function(lambda x: g(x))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_classes=5"):
        fn({"label": tf.constant(lab)})


def test_label_pyramid_is_built_once_per_forward():
    # SPADE needs a one-hot map per resolution: one OneHot op per distinct stride
    # (6 for `normal`: 32..1 plus the shared latent level), not one per norm layer (18).
    cfg = small_config(norm_mode="spade", use_instance=False)
    g = Generator(cfg)
    g.build()
    fn = tf.function(lambda x: g(x, training=False))
    graph = fn.get_concrete_function(g.input_signature(1)).graph
    onehots = [op for op in graph.get_operations() if op.type == "OneHot"]
    assert len(onehots) == 6
    assert len(g.norm_layers()) == 18


def test_config_validation_messages():
    with pytest.raises(ValueError, match="image_height=100 must be a positive multiple of 32"):
        GeneratorConfig(num_classes=3, image_height=100)
    with pytest.raises(ValueError, match="norm_mode='adain'"):
        GeneratorConfig(num_classes=3, norm_mode="adain")
    with pytest.raises(ValueError, match="num_upsampling_layers='lots'"):
        GeneratorConfig(num_classes=3, num_upsampling_layers="lots")
    with pytest.raises(ValueError, match="unknown keys"):
        GeneratorConfig.from_dict({"num_classes": 3, "colour": 1})
    with pytest.raises(ValueError, match="unknown preset 'kitti'"):
        get_preset("kitti")


def test_presets_match_official_settings():
    ade = get_preset("ade20k")
    assert (ade.num_classes, ade.use_instance, ade.image_height, ade.image_width) == (151, False, 256, 256)
    city = get_preset("cityscapes")
    assert (city.num_classes, city.use_instance, city.image_height, city.image_width,
            city.num_upsampling_layers) == (35, True, 256, 512, "more")
    coco = get_preset("coco-stuff")
    assert (coco.num_classes, coco.use_instance) == (183, True)
    assert get_preset("ade20k-outdoor").num_classes == 151
    cfg = city.generator_config("clade")
    assert (cfg.latent_size, cfg.semantic_channels) == ((4, 8), 36)


# --- discriminator ---------------------------------------------------------------------

def np_avg_pool_exclude_pad(x):
    n, h, w, c = x.shape
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.zeros((n, oh, ow, c), np.float32)
    for i in range(oh):
        for j in range(ow):
            r0, r1 = max(2 * i - 1, 0), min(2 * i + 2, h)
            c0, c1 = max(2 * j - 1, 0), min(2 * j + 2, w)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_avg_pool_excludes_padding_like_pytorch(hw):
    x = RNG.standard_normal((2,) + hw + (3,)).astype(np.float32)
    np.testing.assert_allclose(avg_pool_3x3_s2(tf.constant(x)).numpy(), np_avg_pool_exclude_pad(x), atol=1e-5)


def test_multiscale_discriminator_structure_and_round_trip(tmp_path):
    d = MultiscaleDiscriminator(DiscriminatorConfig(ndf=8))
    x = tf.constant(RNG.standard_normal((2, 64, 32, 9)), tf.float32)
    outs = d(x, training=True)
    assert len(outs) == 2 and all(len(o) == 5 for o in outs)
    # kernel 4, padding 2: H -> H/2+1 (stride 2) or H+1 (stride 1)
    assert [tuple(t.shape) for t in outs[0]] == [
        (2, 33, 17, 8), (2, 17, 9, 16), (2, 9, 5, 32), (2, 10, 6, 64), (2, 11, 7, 1)]
    assert tuple(outs[1][0].shape) == (2, 17, 9, 8)
    s0 = d.scales[0]
    assert not s0.convs[0].spectral_norm and s0.convs[0].use_bias
    assert all(c.spectral_norm and not c.use_bias for c in s0.convs[1:-1])
    assert not s0.convs[-1].spectral_norm and s0.convs[-1].use_bias
    ref = [t.numpy() for t in d(x)[1]]
    path = str(tmp_path / "d.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(loaded(x)[1], ref):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-5)
    d.save_weights(str(tmp_path / "d.weights.h5"))
    fresh = MultiscaleDiscriminator(DiscriminatorConfig(ndf=8))
    fresh.build((None, 64, 32, 9))
    fresh.load_weights(str(tmp_path / "d.weights.h5"))
    np.testing.assert_allclose(fresh(x)[0][-1].numpy(), d(x)[0][-1].numpy(), atol=1e-5)


def test_encoder_shapes_and_round_trip(tmp_path):
    e = ConvEncoder(ngf=4, z_dim=16, input_size=64)
    x = tf.constant(RNG.uniform(-1, 1, (2, 48, 48, 3)), tf.float32)  # resized to 64
    mu, logvar = e(x, training=True)
    assert mu.shape == (2, 16) and logvar.shape == (2, 16)
    assert e.fc_mu.kernel.shape == (4 * 8 * 1 * 1, 16)
    assert [c.kernel.shape[-1] for c in e.convs] == [4, 8, 16, 32, 32, 32]
    ref = e(x)[0].numpy()
    path = str(tmp_path / "e.keras")
    e.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x)[0].numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 64"):
        ConvEncoder(input_size=100)


def test_official_encoder_and_discriminator_param_counts_at_full_size():
    # ADE20K official sizes: D input 151 + 3 channels; E 64-wide, 256x256.
    d = MultiscaleDiscriminator()
    d.build((None, 256, 256, 154))
    per_scale = (154 * 16 * 64 + 64) + 64 * 16 * 128 + 128 * 16 * 256 + 256 * 16 * 512 + (512 * 16 + 1)
    assert count_params(d) == 2 * per_scale
    e = ConvEncoder()
    e.build()
    convs = 3 * 9 * 64 + 64 * 9 * 128 + 128 * 9 * 256 + 256 * 9 * 512 + 2 * 512 * 9 * 512
    assert count_params(e) == convs + 2 * (512 * 16 * 256 + 256)


# --- distribution ----------------------------------------------------------------------

DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from clade_tf import Generator, GeneratorConfig
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cfg = GeneratorConfig(num_classes=4, image_height=32, image_width=32, ngf=4,
                          param_free_norm="syncbatch", use_instance=True)
    with strategy.scope():
        g = Generator(cfg)
        g.build()
        opt = tf.keras.optimizers.SGD(0.1)
        opt.build(g.trainable_variables)
    conv = g.blocks[0].conv_0
    u0 = conv.sn_u.numpy()
    lab = tf.constant(np.random.default_rng(0).integers(0, 4, (4, 32, 32)), tf.int32)
    ds = tf.data.Dataset.from_tensor_slices({"label": lab, "instance": lab}).batch(4)
    dist = strategy.experimental_distribute_dataset(ds)

    @tf.function
    def step(batch):
        def fn(b):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(g(b, training=True))) / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, g.trainable_variables)
            opt.apply_gradients(zip(grads, g.trainable_variables))
            return loss
        return strategy.run(fn, args=(batch,))

    for b in dist:
        step(b)
    u1 = conv.sn_u.numpy()
    assert not np.allclose(u0, u1), "power iteration did not update u"
    local = strategy.experimental_local_results(conv.sn_u._value)
    assert len(local) == 2, local
    for v in local:
        np.testing.assert_allclose(v.numpy(), u1)
    print("OK", strategy.num_replicas_in_sync)
    """
)


@pytest.mark.slow
def test_generator_trains_under_mirrored_strategy_with_spectral_and_sync_bn():
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", DISTRIBUTED_SCRIPT], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK 2" in res.stdout


# --- profile ---------------------------------------------------------------------------

def test_profile_counts_clade_and_spade_overheads_small():
    cfg = small_config(use_instance=False)
    clade = generator_profile(cfg)
    none = generator_profile(GeneratorConfig(**{**cfg.to_dict(), "norm_mode": "none"}))
    spade = generator_profile(GeneratorConfig(**{**cfg.to_dict(), "norm_mode": "spade"}))
    assert clade["macs"] == none["macs"]  # a lookup adds no MACs
    assert spade["macs"] > clade["macs"]
    # SPADE adds, per norm of C channels at HxW: HW*(S*9*128 + 2*128*9*C)
    g = Generator(cfg)
    extra = sum(
        (shape[1] * shape[2]) * (cfg.num_classes * 9 * 128 + 2 * 128 * 9 * shape[3])
        for _, shape in g.norm_layers()
    )
    assert spade["macs"] - none["macs"] == extra


def official_generator_counts(ngf, label_nc, norm_mode="clade", contain_dontcare=False, no_instance=True,
                              add_dist=False, use_vae=False, crop_size=256, num_upsampling_layers="normal",
                              z_dim=256):
    """`(params, conv/linear MACs at batch 1, norm elements, norm pixels)` of the official
    `SPADEGenerator` (github.com/tzt101/CLADE at 1ffd19d: models/networks/generator.py,
    architecture.py `SPADEResnetBlock`, normalization.py `SPADE` / `SPADELight` /
    `ClassAffine`), counted from its module structure; square images. The parameter count is
    checked against the official networks' own parameter lists in tests/fixtures."""
    classes = label_nc + (1 if contain_dontcare else 0)
    semantic_nc = classes + (0 if no_instance else 1)
    latent = crop_size // 2 ** {"normal": 5, "more": 6, "most": 7}[num_upsampling_layers]
    n = {"params": 0, "macs": 0, "elements": 0, "pixels": 0}

    def conv(cin, cout, k, hw, bias=True):
        n["params"] += cin * cout * k * k + (cout if bias else 0)
        n["macs"] += hw * cin * cout * k * k

    def norm(c, hw):
        n["elements"] += c * hw
        n["pixels"] += hw
        if norm_mode == "spade":  # mlp_shared (128 hidden), mlp_gamma, mlp_beta
            conv(semantic_nc, 128, 3, hw)
            conv(128, c, 3, hw)
            conv(128, c, 3, hw)
            return
        n["params"] += 2 * classes * c  # ClassAffine weight, bias tables
        if add_dist:  # dist_conv_w, dist_conv_b
            conv(2, 1, 1, hw)
            conv(2, 1, 1, hw)
        if not no_instance:  # inst_conv
            conv(1, 1, 1, hw)

    def block(fin, fout, hw):
        mid, edge = min(fin, fout), 1 if (norm_mode == "clade" and not no_instance) else 0
        norm(fin, hw)
        conv(fin + edge, mid, 3, hw)
        norm(mid, hw)
        conv(mid + edge, fout, 3, hw)
        if fin != fout:
            norm(fin, hw)
            conv(fin + edge, fout, 1, hw, bias=False)

    nf, hw = ngf, latent * latent
    if use_vae:  # fc: Linear(z_dim, 16 nf * sh * sw)
        n["params"] += (z_dim + 1) * 16 * nf * hw
        n["macs"] += z_dim * 16 * nf * hw
    else:
        conv(semantic_nc, 16 * nf, 3, hw)
    block(16 * nf, 16 * nf, hw)  # head_0
    hw *= 4
    block(16 * nf, 16 * nf, hw)  # G_middle_0
    if num_upsampling_layers in ("more", "most"):
        hw *= 4
    block(16 * nf, 16 * nf, hw)  # G_middle_1
    for fin, fout in ((16, 8), (8, 4), (4, 2), (2, 1)):  # up_0 .. up_3
        hw *= 4
        block(fin * nf, fout * nf, hw)
    final = nf
    if num_upsampling_layers == "most":
        hw *= 4
        block(nf, nf // 2, hw)
        final = nf // 2
    conv(final, 3, 3, hw)  # conv_img
    return n["params"], n["macs"], n["elements"], n["pixels"]


@pytest.mark.parametrize("case", ["gen_clade", "gen_clade_inst", "gen_clade_icpe", "gen_spade_inst",
                                  "gen_clade_vae", "gen_clade_more"])
def test_official_counts_match_the_official_parameter_lists(case):
    """The counting above against the parameter shapes the official code itself reported
    (`named_parameters()`, stored in the fixtures)."""
    f = np.load(os.path.join(ROOT, "tests", "fixtures", f"{case}.npz"))
    c = json.loads(str(f["config"]))
    official = sum(int(np.prod(shape)) for shape in json.loads(str(f["param_shapes"])).values())
    params, *_ = official_generator_counts(
        c["ngf"], c["label_nc"], c["norm_mode"], c["contain_dontcare_label"], c["no_instance"], c["add_dist"],
        c["use_vae"], c["crop_size"], c["num_upsampling_layers"], c["z_dim"])
    assert params == official


@pytest.mark.slow
def test_profile_cli_json_small():
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "benchmarks.profile", "--preset", "synthetic", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["preset"] == "synthetic" and out["input"] == "seg"
    assert set(out["modes"]) == {"none", "spade", "clade", "clade-icpe"}
    # the synthetic preset (64 x 64, ngf 16, 6 classes, instance edges) as the official code builds it;
    # elementwise ops by their definition (docs/profile.md): x*g+b 2 per element, SPADE x*(1+g)+b 3, ICPE
    # adds g*(1+d) and b*(1+d), 2 per element plus the 2 additions of the one-channel d per pixel
    official = {mode: official_generator_counts(16, 6, "spade" if mode == "spade" else "clade", no_instance=False,
                                                add_dist=mode == "clade-icpe", crop_size=64)
                for mode in ("spade", "clade", "clade-icpe")}
    elements, pixels = official["clade"][2:]
    elementwise = {"none": 2 * elements, "clade": 2 * elements, "spade": 3 * elements,
                   "clade-icpe": 4 * elements + 2 * pixels}
    for mode, r in out["modes"].items():
        assert r["elementwise_ops"] == elementwise[mode], mode
        if mode in official:
            assert (r["params"], r["macs"]) == official[mode][:2], mode
        assert r["params_overhead_pct"] == pytest.approx(100 * (r["params"] / out["modes"]["none"]["params"] - 1))
        assert r["macs_overhead_pct"] == pytest.approx(100 * (r["macs"] / out["modes"]["none"]["macs"] - 1))


@pytest.mark.slow
def test_ade20k_counts_equal_official_implementation():
    from clade_tf.profiling import profile_modes

    res = profile_modes(get_preset("ade20k").generator_config(), modes=("spade", "clade", "clade-icpe"))
    # ADE20K: 150 classes + don't-care, no instance maps, 256 x 256, ngf 64
    for mode, norm, dist in (("spade", "spade", False), ("clade", "clade", False), ("clade-icpe", "clade", True)):
        params, macs, *_ = official_generator_counts(64, 150, norm, contain_dontcare=True, add_dist=dist)
        assert (res[mode]["params"], res[mode]["macs"]) == (params, macs), mode


# --- Keras layer contract and mixed precision (tests/layer_harness.py) ------------------

# Instance norm over a tiny latent is ill-conditioned: at 1 x 1 it outputs zeros and
# its backward multiplies by 1/sqrt(eps) per layer (float16 gradients overflow); over
# 2 x 1 pixels bfloat16 rounding flips signs. 128 x 64 gives a 4 x 2 latent.
TINY = dict(num_classes=4, image_height=64, image_width=32, ngf=4)
TINY_INSTANCE = dict(num_classes=4, image_height=128, image_width=64, ngf=2)
NETWORK_CASES = {
    "clade-edge-syncbatch": (Generator, dict(config=GeneratorConfig(
        **TINY, norm_mode="clade", param_free_norm="syncbatch", use_instance=True))),
    "icpe-vae-batch": (Generator, dict(config=GeneratorConfig(
        **TINY, norm_mode="clade-icpe", param_free_norm="batch", use_vae=True, z_dim=8))),
    "spade-instance": (Generator, dict(config=GeneratorConfig(
        **TINY_INSTANCE, norm_mode="spade", param_free_norm="instance", use_instance=True,
        spade_hidden=8))),
    "none-instance": (Generator, dict(config=GeneratorConfig(
        **TINY_INSTANCE, norm_mode="none", param_free_norm="instance"))),
    "discriminator": (MultiscaleDiscriminator, dict(config=DiscriminatorConfig(n_layers=3, ndf=4))),
    # 128: the last feature map is 2 x 2 (at 1 x 1 instance norm zeroes it)
    "encoder": (ConvEncoder, dict(ngf=2, z_dim=8, input_size=128)),
}


# plain bfloat16 also rounds the weights: the same 8 bits as mixed_bfloat16's activations
NETWORK_TOLERANCE = {"mixed_float16": 2e-2, "mixed_bfloat16": 1e-1, "bfloat16": 1e-1}


@pytest.mark.parametrize("case", list(NETWORK_CASES))
def test_network_contract(case):
    from clade_tf.inference import calibrate_batch_norm
    from layer_harness import run_layer_test

    cls, kwargs = NETWORK_CASES[case]
    prepare = None
    if cls is Generator:
        data = (inputs_for(kwargs["config"]),)
        # BatchNorm at its initial statistics (0, 1) does not normalize: the
        # activations grow past float16's range
        prepare = lambda g: calibrate_batch_norm(g, data[0])  # noqa: E731
    elif cls is MultiscaleDiscriminator:
        data = (tf.constant(RNG.standard_normal((2, 32, 32, 7)), tf.float32),)
    else:
        data = (tf.constant(RNG.uniform(-1, 1, (2, 128, 128, 3)), tf.float32),)
    # a generator is ~20 layers deep: rounding errors add up
    run_layer_test(cls, kwargs, data, prepare=prepare, tolerance=NETWORK_TOLERANCE)


def test_generator_gradients_under_global_mixed_float16_with_loss_scaling():
    # The loss must be scaled inside the tape: `tape.gradient(opt.scale_loss(loss), ...)`
    # with scale_loss called after the tape closed multiplies outside the recorded
    # graph, and every gradient is None.
    cfg = GeneratorConfig(**TINY, param_free_norm="syncbatch", use_instance=True)
    inp = inputs_for(cfg)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        g = Generator(cfg)
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-4))
        g.build()
        opt.build(g.trainable_variables)
        with tf.GradientTape(persistent=True) as tape:
            fake = g(inp, training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(fake, tf.float32)))
            scaled = opt.scale_loss(loss)
        assert fake.dtype == tf.float16
        assert {v.dtype for v in g.weights} == {"float32"}
        grads = tape.gradient(scaled, g.trainable_variables)
        assert all(gr is not None and np.isfinite(tf.convert_to_tensor(gr).numpy()).all()
                   for gr in grads)
        assert all(gr is None for gr in tape.gradient(opt.scale_loss(loss), g.trainable_variables))
        before = [v.numpy() for v in g.trainable_variables]
        opt.apply_gradients(zip(grads, g.trainable_variables))
        assert int(opt.iterations.numpy()) == 1
        assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, g.trainable_variables))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
