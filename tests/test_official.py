"""Our networks against numbers computed by the official PyTorch code.

The fixtures (see tests/fixtures/README.md) hold inputs, outputs and buffers from
the official tzt101/CLADE networks whose trainable weights were set by a numpy
recipe; here we rebuild the same weights, load them through `clade_tf.torchio.convert`,
run *our* networks and compare.
"""

import json
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf

from clade_tf import ConvEncoder, DiscriminatorConfig, Generator, GeneratorConfig, MultiscaleDiscriminator
from clade_tf.layers import instance_edges
from clade_tf.torchio.convert import load_discriminator, load_encoder, load_generator

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_param(key, shape, gain):
    """The fixtures' weight recipe (tests/fixtures/README.md)."""
    rng = np.random.default_rng([20261125, zlib.crc32(key.encode())])
    if key.endswith("class_specified_affine.weight"):
        return rng.uniform(0.0, 1.0, shape).astype(np.float32)
    if len(shape) == 1 or key.endswith("class_specified_affine.bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    fan_out = shape[0] * int(np.prod(shape[2:]))
    std = gain * np.sqrt(2.0 / (fan_in + fan_out))
    return (std * rng.standard_normal(shape)).astype(np.float32)


def load_fixture(name):
    f = np.load(os.path.join(FIXTURES, f"{name}.npz"))
    gain = float(f["gain"])
    shapes = json.loads(str(f["param_shapes"]))
    sd = {k: fixture_param(k, tuple(shapes[k]), gain) for k in f["param_keys"]}
    sd.update({k[3:]: f[k] for k in f.files if k.startswith("sd/")})
    data = {k: f[k] for k in f.files if k.startswith(("in/", "out/"))}
    return json.loads(str(f["config"])), sd, data


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def generator_from(cfg):
    norm_mode = cfg["norm_mode"]
    if norm_mode == "clade" and cfg.get("add_dist"):
        norm_mode = "clade-icpe"
    pfn = cfg["norm_G"].replace("spectral", "").replace("spade", "").replace("3x3", "")
    return Generator(GeneratorConfig(
        num_classes=cfg["label_nc"] + (1 if cfg["contain_dontcare_label"] else 0),
        image_height=int(cfg["crop_size"] / cfg["aspect_ratio"]), image_width=cfg["crop_size"],
        norm_mode=norm_mode, param_free_norm=pfn, use_instance=not cfg["no_instance"],
        num_upsampling_layers=cfg["num_upsampling_layers"], ngf=cfg["ngf"],
        use_vae=cfg["use_vae"], z_dim=cfg["z_dim"]))


GEN_CASES = ["gen_clade", "gen_clade_inst", "gen_clade_icpe", "gen_spade_inst", "gen_clade_vae",
             "gen_clade_more"]


@pytest.mark.parametrize("case", GEN_CASES)
def test_generator_matches_official(case):
    cfg, sd, data = load_fixture(case)
    inputs = {"label": tf.constant(data["in/label"], tf.int32)}
    if "in/instance" in data:
        inputs["instance"] = tf.constant(data["in/instance"], tf.int32)
        # our in-model edge map equals the official get_edges
        np.testing.assert_array_equal(instance_edges(inputs["instance"]).numpy(), nhwc(data["in/edge"]))
    if "in/dist" in data:
        inputs["dist"] = tf.constant(nhwc(data["in/dist"]))
    if "in/z" in data:
        inputs["z"] = tf.constant(data["in/z"])
    scale = np.abs(data["out/eval_pre_tanh"]).max()

    g = generator_from(cfg)
    assert load_generator(g, sd) == []
    ours = g.features(inputs, training=False).numpy()
    np.testing.assert_allclose(ours, nhwc(data["out/eval_pre_tanh"]), atol=2e-5 * max(scale, 1), rtol=0)
    np.testing.assert_allclose(g(inputs).numpy(), nhwc(data["out/eval"]), atol=2e-5 * max(scale, 1), rtol=0)

    # training mode: batch statistics and one power iteration, from the same state
    g = generator_from(cfg)
    load_generator(g, sd)
    ours = g.features(inputs, training=True).numpy()
    tscale = np.abs(data["out/train_pre_tanh"]).max()
    np.testing.assert_allclose(ours, nhwc(data["out/train_pre_tanh"]), atol=5e-5 * max(tscale, 1), rtol=0)
    np.testing.assert_allclose(g.blocks[0].conv_0.sn_u.numpy(), data["out/train_head_0_conv_0_weight_u"],
                               atol=1e-5)


def test_loading_rejects_mismatched_architectures():
    cfg, sd, _ = load_fixture("gen_clade")
    wrong = GeneratorConfig(**{**generator_from(cfg).config.to_dict(), "ngf": 16})
    with pytest.raises(ValueError, match=r"shape mismatches: fc.weight \(128, 4, 3, 3\) does not fit ours \(3, 3, 4, 256\)"):
        load_generator(Generator(wrong), sd)
    sd_extra = dict(sd, **{"extra.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"1 unexpected: extra.weight"):
        load_generator(generator_from(cfg), sd_extra)
    sd_missing = {k: v for k, v in sd.items() if k not in ("conv_img.bias", "fc.bias")}
    with pytest.raises(ValueError, match=r"2 missing: fc.bias, conv_img.bias"):
        load_generator(generator_from(cfg), sd_missing)


def test_discriminator_matches_official():
    cfg, sd, data = load_fixture("disc")
    d = MultiscaleDiscriminator(DiscriminatorConfig(num_d=cfg["num_D"], n_layers=cfg["n_layers_D"],
                                                    ndf=cfg["ndf"]))
    x = nhwc(data["in/x"])
    assert load_discriminator(d, sd, x.shape[-1]) == []
    outs = d(tf.constant(x), training=False)
    for i, scale in enumerate(outs):
        for j, t in enumerate(scale):
            ref = nhwc(data[f"out/eval_{i}_{j}"])
            np.testing.assert_allclose(t.numpy(), ref, atol=2e-5 * max(np.abs(ref).max(), 1), rtol=0)


def test_encoder_matches_official():
    cfg, sd, data = load_fixture("enc")
    e = ConvEncoder(ngf=cfg["ngf"], z_dim=256, input_size=256)
    assert load_encoder(e, sd) == []
    mu, logvar = e(tf.constant(nhwc(data["in/x"])), training=False)
    np.testing.assert_allclose(mu.numpy(), data["out/mu"], atol=5e-5, rtol=0)
    np.testing.assert_allclose(logvar.numpy(), data["out/logvar"], atol=5e-5, rtol=0)
