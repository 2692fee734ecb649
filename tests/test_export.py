"""Export: every format verified against the Keras model, the input/output contract, atomic writes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from clade_tf import Generator, GeneratorConfig
from export import exporter
from export.__main__ import main as export_main


def make_run(tmp_path, **kw):
    cfg = GeneratorConfig(**{**dict(num_classes=5, image_height=32, image_width=32, ngf=4,
                                    param_free_norm="batch", use_instance=True, norm_mode="clade-icpe"), **kw})
    g = Generator(cfg)
    x = {"label": tf.constant(np.random.default_rng(0).integers(0, 5, (2, 32, 32)), tf.int32),
         "instance": tf.zeros([2, 32, 32], tf.int32), "dist": tf.zeros([2, 32, 32, 2])}
    g(x, training=True)  # non-trivial BatchNorm statistics
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"generator": cfg.to_dict()}))
    g.save_weights(str(run / "generator.weights.h5"))
    return str(run), cfg


def test_export_all_formats_verified_with_one_contract(tmp_path, capsys):
    run, cfg = make_run(tmp_path)
    out = str(tmp_path / "exp")
    assert export_main(["--run", run, "--out", out]) == 0
    files = sorted(os.listdir(out))
    assert files == sorted(list(exporter.FORMATS.values()) + ["report.json"])
    report = json.loads(open(os.path.join(out, "report.json")).read())
    for name in ("saved_model", "model_fp32.tflite", "model.onnx"):
        assert report["formats"][name]["ok"] and report["formats"][name]["rel_l2"] < 1e-4
    for name in ("model_fp16.tflite", "model_int8_dynamic.tflite", "model_int8.tflite"):
        assert np.isfinite(report["formats"][name]["rel_l2"]) and report["formats"][name]["psnr_db"] > 10
    assert report["contract"]["inputs"] == ["label", "instance", "dist"]
    # TFLite: builtin ops, named inputs, one image output
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=os.path.join(out, "model_fp32.tflite"))
    names = sorted(d["name"] for d in it.get_input_details())
    assert names == ["dist", "instance", "label"]
    assert [tuple(d["shape"]) for d in it.get_output_details()] == [(1, 32, 32, 3)]
    import onnx

    m = onnx.load(os.path.join(out, "model.onnx"))
    assert [i.name for i in m.graph.input] == ["label", "instance", "dist"]
    assert [o.name for o in m.graph.output] == ["image"]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    modes = {a.s for n in m.graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "coordinate_transformation_mode"}
    assert modes == {b"asymmetric"}  # no deprecated tf_half_pixel_for_nn


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch, capsys):
    run, _ = make_run(tmp_path, norm_mode="clade")
    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 0.0)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "tflite"]) == 2
    assert "relative L2 error" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_export_errors(tmp_path, capsys):
    assert export_main(["--run", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "no config.json" in capsys.readouterr().err
    run, _ = make_run(tmp_path, norm_mode="clade")
    assert export_main(["--run", run, "--out", str(tmp_path / "e"), "--formats", "tflite,coreml"]) == 2
    assert "unknown format(s) ['coreml']" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e")


def test_infer_runs_every_format_and_rejects_bad_labels(tmp_path, capsys):
    from PIL import Image

    from export.infer import main as infer_main

    run, _ = make_run(tmp_path)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "saved_model,tflite,onnx"]) == 0
    lab = np.kron(np.random.default_rng(1).integers(0, 5, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
    Image.fromarray(lab).save(tmp_path / "label.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "inst.png")
    results = []
    for model in ("saved_model", "model_fp32.tflite", "model.onnx"):
        dst = tmp_path / f"{model}.png"
        assert infer_main(["--model", str(out / model), "--labels", str(tmp_path / "label.png"),
                           "--instances", str(tmp_path / "inst.png"), "--out", str(dst)]) == 0
        img = np.asarray(Image.open(dst)).astype(np.int64)
        assert img.shape == (32, 32, 3)
        results.append(img)
    assert max(np.abs(a - results[0]).max() for a in results) <= 1  # same model, same pixels
    bad = lab.copy()
    bad[0, 0] = 9
    Image.fromarray(bad).save(tmp_path / "bad.png")
    Image.fromarray(lab[:16]).save(tmp_path / "small.png")
    capsys.readouterr()
    cases = [
        (["--labels", str(tmp_path / "bad.png"), "--instances", str(tmp_path / "inst.png")],
         "bad.png: class 9 is not known to the model (classes 0..4)"),
        (["--labels", str(tmp_path / "small.png"), "--instances", str(tmp_path / "inst.png")],
         "small.png: label map is 32x16, the model expects 32x32"),
        (["--labels", str(tmp_path / "label.png")], "this model uses instance edges: pass --instances"),
    ]
    for extra, message in cases:
        assert infer_main(["--model", str(out / "model.onnx"), "--out", str(tmp_path / "x.png"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {err[7:]}" and message in err, err
