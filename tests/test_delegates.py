"""The delegate check (clade_tf.export.delegates) on models built here: it must name the ops the
GPU delegate refuses (a 3-D-index GATHER, an int8 GATHER, a GATHER_ND), pass a clean model, and
count XNNPACK's partitions from the real interpreter; then on a real tiny export."""

import numpy as np
import pytest
import tensorflow as tf

from clade_tf.export import delegates


def tflite_file(tmp_path, name, fn, specs, int8=False):
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(fn).get_concrete_function(*specs)])
    if int8:
        def representative():
            rng = np.random.default_rng(0)
            for _ in range(4):
                yield [rng.random(s.shape).astype(np.float32) if s.dtype == tf.float32
                       else rng.integers(0, 4, s.shape).astype(np.int32) for s in specs]
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(conv.convert())
    return str(path)


TABLE = tf.constant(np.arange(4 * 3, dtype=np.float32).reshape(4, 3))
LABEL = tf.TensorSpec([1, 8, 8], tf.int32)
IMAGE = tf.TensorSpec([1, 8, 8, 3], tf.float32)
KERNEL = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 3, 3)).astype(np.float32))


def conv(x):
    return tf.nn.conv2d(x, KERNEL, 1, "SAME")


def refused(result, op):
    return [r for r in result["refused"] if r["op"] == op]


def test_gpu_check_names_a_3d_index_gather(tmp_path):
    path = tflite_file(tmp_path, "gather3d", lambda label: tf.gather(TABLE, label), [LABEL])
    result = delegates.gpu_check(path)
    assert not result["ok"]
    (r,) = refused(result, "GATHER")
    assert "indices rank 3" in r["reason"] and "1-D int32" in r["reason"]


def test_gpu_check_names_an_int8_gather(tmp_path):
    # a full-integer model: the table is int8 and GATHER's int8 kernel is version 2
    def fn(x, label):
        table = conv(x)[0, 0]  # [8, 3] float, quantized to int8 by the converter
        return tf.gather(table, tf.reshape(label, [-1]))
    path = tflite_file(tmp_path, "gather_int8", fn, [IMAGE, LABEL], int8=True)
    ops, _ = delegates.read_ops(path)
    gathers = [op for op in ops if op.name == "GATHER"]
    assert gathers and gathers[0].inputs[0].type == "INT8"
    result = delegates.gpu_check(path)
    (r,) = refused(result, "GATHER")
    assert "version 2" in r["reason"]


def test_gpu_check_names_a_gather_nd(tmp_path):
    path = tflite_file(tmp_path, "gather_nd", lambda label: tf.gather_nd(TABLE, label[..., None]), [LABEL])
    result = delegates.gpu_check(path)
    (r,) = refused(result, "GATHER_ND")
    assert r["reason"] == "not a GPU delegate op"
    assert result["refused_by_op"]["GATHER_ND"] == 1


def test_gpu_check_passes_a_conv_and_1d_gather(tmp_path):
    def fn(x, label):
        rows = tf.gather(TABLE, tf.reshape(label, [64]))  # the flattened lookup: [H*W, C]
        return conv(x) + tf.reshape(rows, [1, 8, 8, 3])
    path = tflite_file(tmp_path, "clean", fn, [IMAGE, tf.TensorSpec([64], tf.int32)])
    result = delegates.gpu_check(path)
    assert result["ok"], result["refused"]
    assert "GATHER" in {op.name for op in delegates.read_ops(path)[0]}


def test_xnnpack_counts_partitions(tmp_path):
    # XNNPACK has no GATHER: a GATHER between two convs splits the graph into two partitions
    def split(x, label):
        rows = tf.gather(tf.reshape(conv(x), [64, 3]), label)
        return conv(tf.reshape(rows, [1, 8, 8, 3]))
    two = delegates.xnnpack_check(tflite_file(tmp_path, "split", split, [IMAGE, tf.TensorSpec([64], tf.int32)]))
    assert two["partitions"] == 2 and not two["ok"]
    assert two["outside_by_op"] == {"GATHER": 1}
    one = delegates.xnnpack_check(tflite_file(tmp_path, "convs", lambda x: conv(conv(x)), [IMAGE]))
    assert one["partitions"] == 1 and one["outside"] == [] and one["ok"]
    assert one["ops"] == 2


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        delegates.gpu_check(str(bad))


@pytest.mark.slow
def test_check_on_a_tiny_export(tmp_path, capsys):
    import json

    from export.__main__ import main as export_main
    from test_export import make_run
    run, _ = make_run(tmp_path)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "tflite-fp32"]) == 0
    result = delegates.check(str(out / "model_fp32.tflite"))
    assert set(result) == {"gpu", "xnnpack"}
    ops, _ = delegates.read_ops(str(out / "model_fp32.tflite"))
    gathers_3d = {op.index for op in ops if op.name == "GATHER" and op.inputs[1].rank == 3}
    named = {r["index"] for r in result["gpu"]["refused"] if r["op"] == "GATHER"}
    assert gathers_3d <= named  # every 3-D-index lookup left in the graph is named
    assert result["xnnpack"]["partitions"] >= 1 and result["xnnpack"]["ops"] == len(ops)
    line = delegates.summary(result)
    assert line.startswith("GPU delegate: ") and "XNNPACK: " in line
    # python -m export printed the same verdict under the file's row and wrote it into report.json
    assert line in capsys.readouterr().out
    with open(out / "report.json") as f:
        entry = json.load(f)["formats"]["model_fp32.tflite"]
    assert entry["delegates"] == json.loads(json.dumps(result))


def test_cli_one_line_per_file_and_json(tmp_path, capsys):
    import json

    from export.delegates import main
    path = tflite_file(tmp_path, "gather3d", lambda label: tf.gather(TABLE, label), [LABEL])
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: GPU delegate: 1 of 1 ops refused (1 GATHER); XNNPACK: 0 partitions")
    assert main([str(tmp_path), "--json"]) == 0  # a directory: its .tflite files
    result = json.loads(capsys.readouterr().out)
    assert result[path]["gpu"]["refused"][0]["op"] == "GATHER"
    assert main([str(tmp_path / "missing.tflite")]) == 2
    assert "missing.tflite: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("a, b, ok", [((1, 64), (1, 1, 1, 1), True), ((1, 3), (1, 8, 8, 3), True),
                                      ((1, 4), (1, 8, 8, 3), False)])
def test_gpu_broadcast_rule(a, b, ok):
    # the GPU delegate's ADD/MUL broadcasting: aligned from the last dim, equal or either one 1
    ins = [delegates.Tensor(0, "a", a, "FLOAT32", False), delegates.Tensor(1, "b", b, "FLOAT32", False)]
    op = delegates.Op(0, "MUL", 1, ins, [delegates.Tensor(2, "y", (1, 8, 8, 3), "FLOAT32", False)], None)
    reason = delegates.op_rule(op, [op], {0: [0], 1: [0]})
    assert (reason is None) == ok, reason
