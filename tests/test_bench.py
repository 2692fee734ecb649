"""Benchmark tooling: the lookup variants compute what the shipped layer computes, and the
tf2onnx memory workaround leaves tf2onnx as it found it."""

import os

import numpy as np
import pytest
import tensorflow as tf

from clade_tf import Generator, GeneratorConfig
from clade_tf.inference import fold_for_inference
from export import exporter, variants


@pytest.mark.parametrize("variant", variants.VARIANTS)
def test_lookup_variants_equal_the_folded_generator(variant):
    cfg = GeneratorConfig(num_classes=7, image_height=32, image_width=32, ngf=4, param_free_norm="batch")
    g = Generator(cfg)
    x = {k: tf.constant(v) for k, v in exporter.example_inputs(cfg, 2, seed=0)[0].items()}
    g(x, training=True)  # BatchNorm statistics to fold
    ref = g.features(x, training=False).numpy()
    fn, names = variants._trace(fold_for_inference(g), variant)
    out = fn(*[x[n][:1] for n in names])["image"].numpy()
    want = np.tanh(ref[:1])
    assert np.abs(out - want).max() < 1e-4 * max(1.0, np.abs(want).max())
    # the variant really changed the graph (different op counts), except the baseline
    ops = {op.type for op in fn.get_concrete_function().graph.get_operations()}
    assert ("Split" in ops or "SplitV" in ops) == (variant in ("fused", "shared"))
    assert ("MatMul" in ops) == (variant == "betas")


def test_lean_tf2onnx_restores_tf2onnx():
    import tf2onnx.graph

    before = tf2onnx.graph.Node.update_proto
    env = os.environ.get("TF2ONNX_CATCH_ERRORS")
    with exporter.lean_tf2onnx():
        assert tf2onnx.graph.Node.update_proto is exporter._update_node_proto
        assert "TF2ONNX_CATCH_ERRORS" in os.environ
    assert tf2onnx.graph.Node.update_proto is before
    assert os.environ.get("TF2ONNX_CATCH_ERRORS") == env
