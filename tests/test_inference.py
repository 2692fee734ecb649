"""Folded inference generators equal the originals in inference, without the training-time ops."""

import numpy as np
import pytest
import tensorflow as tf

from clade_tf import Generator, GeneratorConfig
from clade_tf.inference import calibrate_batch_norm, fold_for_inference

RNG_SEED = 5  # tests/conftest.py resets RNG to it before each test
RNG = np.random.default_rng(RNG_SEED)


def inputs(cfg, n=2):
    h, w = cfg.image_height, cfg.image_width
    d = {"label": tf.constant(RNG.integers(0, cfg.num_classes, (n, h, w)), tf.int32),
         "instance": tf.constant(RNG.integers(0, 3, (n, h, w)), tf.int32),
         "dist": tf.constant(RNG.uniform(-1, 1, (n, h, w, 2)), tf.float32)}
    if cfg.use_vae:
        d["z"] = tf.constant(RNG.standard_normal((n, cfg.z_dim)), tf.float32)
    return d


def op_types(g):
    fn = tf.function(lambda x: g(x, training=False))
    return [op.type for op in fn.get_concrete_function(g.input_signature(1)).graph.get_operations()]


@pytest.mark.parametrize("mode", ["clade", "clade-icpe", "spade", "none"])
@pytest.mark.parametrize("pfn", ["batch", "instance"])
def test_folded_generator_equals_original_in_inference(mode, pfn):
    cfg = GeneratorConfig(num_classes=5, image_height=32, image_width=32, ngf=4, norm_mode=mode,
                          param_free_norm=pfn, use_instance=True, use_vae=(mode == "none"))
    g = Generator(cfg)
    x = inputs(cfg)
    for _ in range(3):  # non-trivial BatchNorm statistics and spectral-norm state
        g(x, training=True)
    for blk in g.blocks:  # CLADE beta starts at zero: make it matter
        for norm in blk.norm_layers():
            if hasattr(norm, "beta"):
                norm.beta.assign(RNG.standard_normal(norm.beta.shape).astype(np.float32))
    f = fold_for_inference(g)
    ref = g.features(x, training=False).numpy()
    np.testing.assert_allclose(f.features(x).numpy(), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert not any(w.path.endswith(("sn_u", "sn_v")) for w in f.weights)
    types = op_types(f)
    assert "Assert" not in types
    folded = pfn == "batch" and mode in ("clade", "none")
    assert f.config == cfg and f.folds_batch_norm == folded
    if folded:
        # each CLADE layer: lookup + multiply-add; no normalization ops left
        assert "Rsqrt" not in types and "FusedBatchNormV3" not in types
    assert types.count("Conv2D") == op_types(g).count("Conv2D")
    assert "OneHot" not in types  # TFLite's int8 ONE_HOT is wrong: a lookup instead


def test_calibrate_batch_norm_sets_one_batch_statistics_and_keeps_momentum():
    cfg = GeneratorConfig(num_classes=5, image_height=32, image_width=32, ngf=4,
                          param_free_norm="batch")
    g = Generator(cfg)
    g.build()
    x = {"label": inputs(cfg)["label"].numpy()}
    calibrate_batch_norm(g, x)
    bn = g.blocks[-1].norm_1.norm.bn
    assert bn.momentum == pytest.approx(0.9)
    # momentum 0 for the pass: the moving statistics are exactly this batch's
    captured = {}
    orig = bn.call

    def spy(t, training=None, mask=None):
        captured["x"] = t.numpy()
        return orig(t, training=training, mask=mask)

    bn.call = spy
    g({"label": tf.constant(x["label"])}, training=False)
    bn.call = orig
    m = captured["x"].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), m, atol=1e-5 * max(1.0, np.abs(m).max()))
    out = g({"label": tf.constant(x["label"])}, training=False).numpy()
    assert np.isfinite(out).all() and np.abs(out).max() < 1.0  # normalized, not saturated


@pytest.mark.parametrize("mode", ["clade", "clade-icpe"])
def test_each_tflite_lookup_runs_just_before_its_layer(mode, tmp_path):
    """TFLite runs the ops XNNPACK does not take as early as their inputs allow: a lookup
    that depends only on the label map ran before the first conv, all of them alive at
    once. Ordered (`ordered_lookups`, which the exports no longer ask for:
    `clade_tf.export.exporter.graph_options`), each lookup waits for its layer's input (the numbers are unchanged:
    `test_folded_generator_equals_original_in_inference`)."""
    from ai_edge_litert.interpreter import Interpreter

    from clade_tf.export import serving_function, write_format

    cfg = GeneratorConfig(num_classes=5, image_height=32, image_width=32, ngf=4, norm_mode=mode,
                          param_free_norm="batch")
    f = fold_for_inference(Generator(cfg))
    path = str(tmp_path / "g.tflite")
    before_first_conv = {}
    for ordered in (True, False):
        write_format("tflite-fp32", path, *serving_function(f, 1, ordered_lookups=ordered))
        ops = [o["op_name"] for o in Interpreter(path)._get_ops_details()]
        before_first_conv[ordered] = ops[:ops.index("CONV_2D")].count("GATHER")
    assert before_first_conv[True] == 1  # the one-hot lookup that feeds it
    # not ordered (what every export gets): the lookups (CLADE) or the positional
    # convs (CLADE-ICPE) come first
    assert (before_first_conv[False] > 1) if mode == "clade" else (before_first_conv[False] == 0)
