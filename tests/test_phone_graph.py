"""The phone graph: the exported TFLite generator in the forms the GPU delegate and
XNNPACK take (1-D-index lookups, nearest x2 without RESIZE_NEAREST_NEIGHBOR, no 0-D
tensors), with the same numbers as the plain graph."""

import numpy as np
import pytest
import tensorflow as tf

from clade_tf import Generator, GeneratorConfig
from clade_tf.export.converters import serving_function, tflite_bytes
from clade_tf.export.exporter import example_inputs, graph_options
from clade_tf.inference import after, check_graph, fold_for_inference, lookup, upsample2x_phone
from clade_tf.networks.generator import upsample2x

RNG = np.random.default_rng(23)


def test_flat_lookup_equals_the_nd_gather():
    table = tf.constant(RNG.standard_normal((7, 5)), tf.float32)
    index = tf.constant(RNG.integers(0, 7, (2, 3, 4)), tf.int32)
    want = table.numpy()[index.numpy()]  # numpy's fancy indexing, not our code
    np.testing.assert_array_equal(lookup(table, index, flat=True).numpy(), want)
    np.testing.assert_array_equal(lookup(table, index, flat=False).numpy(), want)
    # unknown shapes (a traced batch of None) reshape back through tf.shape
    fn = tf.function(lambda i: lookup(table, i, flat=True),
                     input_signature=[tf.TensorSpec([None, 3, 4], tf.int32)])
    np.testing.assert_array_equal(fn(index).numpy(), want)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 4), (1, 4, 2, 3)])
def test_depth_to_space_upsampling_is_bit_identical_to_nearest(shape):
    x = tf.constant(RNG.standard_normal(shape), tf.float32)
    want = np.repeat(np.repeat(x.numpy(), 2, axis=1), 2, axis=2)  # source = floor(dst / 2)
    np.testing.assert_array_equal(upsample2x_phone(x).numpy(), want)
    np.testing.assert_array_equal(upsample2x(x).numpy(), want)


def test_after_adds_a_rank_matching_zero():
    t = tf.constant(RNG.integers(0, 5, (1, 4, 4)), tf.int32)
    for v in (0.0, np.inf, -np.inf, np.nan):
        x = tf.fill([1, 2, 2, 3], v)
        out = after(t, x)
        np.testing.assert_array_equal(out.numpy(), t.numpy())
    graph = tf.function(lambda a, b: after(a, b)).get_concrete_function(
        tf.TensorSpec([1, 4, 4], tf.int32), tf.TensorSpec([1, 2, 2, 3], tf.float32)).graph
    adds = [op for op in graph.get_operations() if op.type in ("Add", "AddV2")]
    assert adds and all(i.shape.rank == 3 for op in adds for i in op.inputs)


def test_unknown_graph_options_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown graph option 'lookup'"):
        check_graph({"lookup": "flat-1d"})
    with pytest.raises(ValueError, match=r"graph option upsample='bilinear'; expected one of"):
        check_graph({"upsample": "bilinear"})
    assert check_graph({}) == {"lookups": "nd", "upsample": "resize", "ordered_lookups": False}


def tiny(mode, **kw):
    return GeneratorConfig(num_classes=5, image_height=32, image_width=32, ngf=4, norm_mode=mode,
                           param_free_norm="batch", **kw)


@pytest.mark.parametrize("mode,kw", [("clade", {}), ("clade-icpe", {}), ("spade", {}),
                                     ("clade", {"use_instance": True}), ("none", {"use_vae": True})])
def test_every_graph_option_gives_the_same_numbers(mode, kw):
    cfg = tiny(mode, **kw)
    f = fold_for_inference(Generator(cfg))
    x = {k: tf.constant(v) for k, v in example_inputs(cfg, 2, seed=3)[0].items()}
    ref = f.features(x).numpy()
    for graph in ({"lookups": "flat-1d"}, {"upsample": "depth-to-space"}, {"ordered_lookups": True},
                  {"lookups": "flat-1d", "upsample": "depth-to-space", "ordered_lookups": True}):
        f.set_graph(graph)
        np.testing.assert_allclose(f.features(x).numpy(), ref, rtol=0, atol=1e-6 * np.abs(ref).max(),
                                   err_msg=str(graph))
    f.set_graph({})


def flatbuffer_ops(data):
    """`[(op name, version, [input shapes], shrink_axis_mask or None, [computed input shapes])]`
    read from the flatbuffer; computed inputs are those without constant data (a constant
    scalar operand, such as CLADE-ICPE's `1 + conv`, the GPU delegate takes)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    graph = model.subgraphs[0]
    out = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        shapes = [list(graph.tensors[i].shape) for i in op.inputs if i >= 0]
        shrink = op.builtinOptions.shrinkAxisMask if name == "STRIDED_SLICE" else None
        computed = [list(graph.tensors[i].shape) for i in op.inputs
                    if i >= 0 and model.buffers[graph.tensors[i].buffer].data is None]
        out.append((name, code.version, shapes, shrink, computed))
    return out


def xnnpack_partitions(path):
    """The DELEGATE nodes the interpreter's default delegate (XNNPACK) made."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(path)
    it.allocate_tensors()
    return [o["op_name"] for o in it._get_ops_details()].count("DELEGATE")


@pytest.mark.parametrize("mode", ["clade", "clade-icpe", "spade"])
def test_phone_fp32_graph_is_delegate_clean(mode, tmp_path):
    """The fp32 export's graph options against the plain graph: every lookup a 1-D-index
    GATHER, no resize, no 0-D operand, no shrinking slice, one XNNPACK partition (the
    plain graph: N-D GATHERs and a partition between resizes)."""
    cfg = tiny(mode)
    f = fold_for_inference(Generator(cfg))
    found = {}
    for name, graph in (("plain", {"ordered_lookups": True}), ("phone", graph_options("tflite-fp32"))):
        fn, names = serving_function(f, 1, graph=graph)
        data = tflite_bytes(fn, names, "tflite-fp32")
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        found[name] = flatbuffer_ops(data), xnnpack_partitions(str(path))
    ops, partitions = found["phone"]
    gathers = [shapes for name, _, shapes, _, _ in ops if name == "GATHER"]
    assert gathers and all(len(shapes[1]) == 1 for shapes in gathers)
    assert all(v == 1 for name, v, _, _, _ in ops if name == "GATHER")
    assert not any(name == "RESIZE_NEAREST_NEIGHBOR" for name, *_ in ops)
    assert not any(shrink for *_, shrink, _ in ops)
    assert not any(len(s) == 0 for name, *_, computed in ops if name in ("ADD", "SUB", "MUL") for s in computed)
    assert partitions == 1
    # the plain graph breaks every one of these rules (so the checks above can fail)
    plain_ops, plain_partitions = found["plain"]
    assert any(len(shapes[1]) > 1 for name, _, shapes, _, _ in plain_ops if name == "GATHER")
    assert any(name == "RESIZE_NEAREST_NEIGHBOR" for name, *_ in plain_ops)
    assert plain_partitions > 1
    if mode != "spade":  # the lookup order, which the phone graph leaves out: its int ops per layer
        assert any(name == "GREATER" for name, *_ in plain_ops)
        assert not any(name == "GREATER" for name, *_ in ops)


def test_ordered_flat_lookups_have_no_0d_operand(tmp_path):
    """The lookup order, when asked for, keeps its dependency through a rank-matching 0
    (the GPU delegate refuses an ADD with a 0-D input and a shrinking STRIDED_SLICE)."""
    f = fold_for_inference(Generator(tiny("clade-icpe")))
    fn, names = serving_function(f, 1, graph={"lookups": "flat-1d", "ordered_lookups": True})
    ops = flatbuffer_ops(tflite_bytes(fn, names, "tflite-fp32"))
    assert any(name == "GREATER" for name, *_ in ops)  # the order is there
    assert not any(shrink for *_, shrink, _ in ops)
    assert not any(len(s) == 0 for name, *_, computed in ops if name in ("ADD", "SUB", "MUL") for s in computed)
