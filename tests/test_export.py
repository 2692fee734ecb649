"""Export: every format verified against the Keras model (fp16/int8 against fp32 TFLite), the
input/output contract, atomic writes, --weights + --preset, int8 calibration on the run's data."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from clade_tf import Generator, GeneratorConfig, presets
from clade_tf.config import OptimConfig, RunConfig
from clade_tf.export import exporter, runtime
from clade_tf.rundir import RunDirectory
from conftest import TINY
from export.__main__ import main as export_main

# ngf 4: the export tests convert every format, and the generator's size sets their time
TINY = TINY.replace(ngf=4)


@pytest.fixture
def tiny_synthetic(monkeypatch):
    """The `synthetic` preset at 32x32, ngf 4 (the real one is 64x64, ngf 16)."""
    monkeypatch.setitem(presets.PRESETS, "synthetic", TINY)
    return TINY


def unsaturated_generator(cfg, seed=0):
    """A generator whose image spans a real range without saturating tanh, as a trained one
    does. With the default 0.02-gain initialisation |image| is ~1e-4: int8 rounds it to 0 and
    an all-zero model matches it to 80 dB. Conv kernels are drawn at xavier gain 1, BatchNorm
    statistics moved by one training pass (fully calibrated statistics amplify the per-tensor
    int8 rounding of weak channels, which trained weights do not have: full int8 then errs
    by ~0.9), and the last conv scaled to a pre-tanh std of 0.5."""
    g = Generator(cfg)
    g.build()
    rng = np.random.default_rng(seed)
    for v in g.trainable_weights:
        if len(v.shape) == 4:
            fan_in, fan_out = int(np.prod(v.shape[:3])), int(v.shape[3] * np.prod(v.shape[:2]))
            v.assign(rng.standard_normal(v.shape).astype(np.float32) * np.sqrt(2.0 / (fan_in + fan_out)))
    x = {k: tf.constant(v) for k, v in exporter.example_inputs(cfg, 8, seed=seed + 100)[0].items()}
    g(x, training=True)
    scale = 0.5 / float(np.std(g.features(x, training=False).numpy()))
    g.conv_img.kernel.assign(g.conv_img.kernel * scale)
    g.conv_img.bias.assign(g.conv_img.bias * scale)
    y = keras_output(g, exporter.example_inputs(cfg, 4, seed=seed + 200)[0])
    assert y.std(axis=(1, 2)).mean() > 0.2 and np.mean(np.abs(y) > exporter.SATURATION) < 0.02
    return g


def keras_output(g, inputs):
    return g({k: tf.constant(v) for k, v in inputs.items()}, training=False).numpy()


def make_run(tmp_path, dontcare=False, **kw):
    cfg = GeneratorConfig(**{**dict(num_classes=5, image_height=32, image_width=32, ngf=4,
                                    param_free_norm="batch", use_instance=True, norm_mode="clade-icpe"), **kw})
    g = unsaturated_generator(cfg)
    # an imported run (as export.from_torch writes it): a custom dataset without a folder
    data = presets.custom_preset(4 if dontcare else 5, contain_dontcare=dontcare, use_instance=True).data_config()
    RunDirectory(tmp_path / "run").write_imported(RunConfig(data=data, generator=cfg), g, None,
                                                  {"checkpoint": "G.pth"})
    return str(tmp_path / "run"), cfg


def test_export_all_formats_verified_with_one_contract(tmp_path, capsys):
    run, cfg = make_run(tmp_path)
    out = str(tmp_path / "exp")
    assert export_main(["--run", run, "--out", out]) == 0
    files = sorted(os.listdir(out))
    assert files == sorted(list(runtime.FORMATS.values()) + ["report.json"])
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    # each file, run here on inputs the exporter did not verify on, against the Keras model: within
    # its format's limit (fp16/int8 limits are against fp32 TFLite, which is within 1e-4 of Keras)
    g, _ = RunDirectory(run).load_generator()
    x = exporter.example_inputs(cfg, 1, seed=7, n_batches=2)
    x = {k: np.concatenate([d[k] for d in x]) for k in x[0]}
    want = keras_output(g, x)
    for kind, name in runtime.FORMATS.items():
        entry = report["formats"][name]
        fp32 = kind in runtime.FP32_FORMATS
        assert entry["reference"] == ("keras" if fp32 else "tflite fp32")
        assert entry["ok"] and entry["limit"] == exporter.tolerance(kind) and entry["rel_l2"] <= entry["limit"]
        err, _ = exporter.compare(runtime.load_runner(os.path.join(out, name))(x), want)
        assert err <= exporter.tolerance(kind) + exporter.FP32_TOLERANCE, (name, err)
    assert report["calibration"] == "random blocky labels"  # the run's data has no folder
    assert "notice: int8 calibration on 32 blocky random label maps" in capsys.readouterr().out
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
    # each format's graph options recorded; the TFLite formats' phone graph: no lookup order
    # (GREATER), no RESIZE_NEAREST_NEIGHBOR (tests/test_phone_graph.py)
    for kind, name in runtime.FORMATS.items():
        assert report["formats"][name]["graph"] == exporter.graph_options(kind), kind
        if kind.startswith("tflite"):
            ops = {o["op_name"] for o in Interpreter(model_path=os.path.join(out, name))._get_ops_details()}
            assert "GREATER" not in ops and "RESIZE_NEAREST_NEIGHBOR" not in ops, kind
    assert report["formats"]["model_fp16.tflite"]["graph"]["lookups"] == "flat-1d"
    assert "Greater" not in {n.op_type for n in m.graph.node}


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
    assert export_main(["--run", run, "--out", str(tmp_path / "e"), "--formats", ","]) == 2
    assert "--formats ',': no format named" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e")


def test_infer_runs_every_format_and_rejects_bad_labels(tmp_path, capsys):
    from PIL import Image

    from clade_tf.data.icpe import icpe_distance_map
    from export.infer import main as infer_main

    run, _ = make_run(tmp_path)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "saved_model,tflite,onnx"]) == 0
    rng = np.random.default_rng(1)
    lab = np.kron(rng.integers(0, 5, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
    inst = np.kron(rng.integers(0, 4, (2, 4)), np.ones((16, 8), np.int64)).astype(np.uint8)  # edges inside classes
    Image.fromarray(lab).save(tmp_path / "label.png")
    Image.fromarray(inst).save(tmp_path / "inst.png")
    # the Keras model on the same maps, with the ICPE map from the labels: what every format must give
    g, _ = RunDirectory(run).load_generator()
    want = keras_output(g, {"label": lab[None].astype(np.int32), "instance": inst[None].astype(np.int32),
                            "dist": icpe_distance_map(lab.astype(np.int32))[None]})[0]
    want = np.clip(np.rint((want + 1) * 127.5), 0, 255)
    assert want.std() > 20  # an image, not a flat colour
    results = []
    for model in ("saved_model", "model_fp32.tflite", "model.onnx"):
        dst = tmp_path / f"{model}.png"
        assert infer_main(["--model", str(out / model), "--labels", str(tmp_path / "label.png"),
                           "--instances", str(tmp_path / "inst.png"), "--out", str(dst)]) == 0
        img = np.asarray(Image.open(dst)).astype(np.int64)
        assert img.shape == (32, 32, 3) and np.abs(img - want).max() <= 1, model
        results.append(img)
    # the export directory itself: its fp32 TFLite model, the same pixels
    assert infer_main(["--model", str(out), "--labels", str(tmp_path / "label.png"),
                       "--instances", str(tmp_path / "inst.png"), "--out", str(tmp_path / "dir.png")]) == 0
    assert "model_fp32.tflite" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "dir.png")), results[1])
    bad = lab.copy()
    bad[0, 0] = 9
    Image.fromarray(bad).save(tmp_path / "bad.png")
    Image.fromarray(np.stack([lab, lab, lab + 1], axis=-1)).save(tmp_path / "rgb.png")  # not the palette's
    capsys.readouterr()
    cases = [
        (["--labels", str(tmp_path / "bad.png"), "--instances", str(tmp_path / "inst.png")],
         "bad.png: class 9 is not known to the model (classes 0..4)"),
        (["--labels", str(tmp_path / "rgb.png"), "--instances", str(tmp_path / "inst.png")],
         (f"rgb.png: pixel (0, 0) is colour ({lab[0, 0]}, {lab[0, 0]}, {lab[0, 0] + 1}), neither a class id nor "
          "a colour of the palette")),
        (["--labels", str(tmp_path / "label.png")], "this model uses instance edges: pass --instances"),
    ]
    for extra, message in cases:
        assert infer_main(["--model", str(out / "model.onnx"), "--out", str(tmp_path / "x.png"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {err[7:]}" and message in err, err


def test_export_from_weights_and_preset(tiny_synthetic, tmp_path):
    cfg = tiny_synthetic.generator_config("clade", param_free_norm="batch")
    g = unsaturated_generator(cfg)
    weights = str(tmp_path / "G.weights.h5")
    g.save_weights(weights)
    out = tmp_path / "exp"
    assert export_main(["--weights", weights, "--preset", "synthetic", "--param-free-norm", "batch",
                        "--out", str(out), "--formats", "tflite"]) == 0
    assert sorted(os.listdir(out)) == ["model_fp32.tflite", "report.json"]
    # --force replaces an earlier export, and the temporary folder of a killed export goes too
    stale = tmp_path / "exp.tmp-999999999"
    stale.mkdir()
    assert export_main(["--weights", weights, "--preset", "synthetic", "--param-free-norm", "batch",
                        "--out", str(out), "--formats", "tflite", "--force"]) == 0
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ["G.weights.h5", "exp"]
    report = json.loads((out / "report.json").read_text())
    assert report["generator"] == cfg.to_dict() and report["formats"]["model_fp32.tflite"]["ok"]
    # the exported model is the saved generator (not a freshly initialised one)
    x = exporter.example_inputs(cfg, 2, seed=9)[0]
    ref = g({k: tf.constant(v) for k, v in x.items()}, training=False).numpy()
    err, _ = exporter.compare(runtime.load_runner(str(out / "model_fp32.tflite"))(x), ref)
    assert err < 1e-4


def test_weights_errors_are_one_line(tiny_synthetic, tmp_path, capsys):
    g = unsaturated_generator(tiny_synthetic.generator_config("clade"))  # param-free norm syncbatch
    weights = str(tmp_path / "G.weights.h5")
    g.save_weights(weights)
    base = ["--weights", weights, "--preset", "synthetic", "--out", str(tmp_path / "e"), "--formats", "tflite"]
    cases = [
        (["--norm", "spade"], (f"error: {weights} does not match preset synthetic / norm spade "
                               "(param-free norm syncbatch): A total of")),
        (["--norm", "clade-icpe"], f"error: {weights} does not match preset synthetic / norm clade-icpe"),
        (["--use-vae"], (f"error: {weights} does not match preset synthetic / norm clade (param-free norm "
                         "syncbatch, VAE): A total of 1 objects could not be loaded; e.g. Layer 'fc'")),
        # Keras loads this without complaint and drops the BatchNorm statistics
        (["--param-free-norm", "instance"], (f"error: {weights} does not match preset synthetic / norm clade "
                                             "(param-free norm instance): the file holds")),
    ]
    for extra, message in cases:
        assert export_main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(message), err
    missing = str(tmp_path / "nope.weights.h5")
    assert export_main(["--weights", missing, "--preset", "synthetic", "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == f"error: weights file not found: {missing}"
    assert export_main(["--weights", weights, "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --weights needs --preset NAME")
    run, _ = make_run(tmp_path, norm_mode="clade")
    assert export_main(["--run", run, "--norm", "spade", "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --norm: only with --weights")
    assert not os.path.exists(tmp_path / "e")


@pytest.mark.parametrize("args,message", [
    (["--run", "r", "--weights", "w.weights.h5", "--preset", "synthetic"],
     "error: argument --weights: not allowed with argument --run"),
    (["--preset", "synthetic"], "error: one of the arguments --run --weights is required"),
])
def test_run_and_weights_are_mutually_exclusive(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export_main([*args, "--out", str(tmp_path / "e")])
    assert e.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].endswith(message), errors


def make_synthetic_run(tmp_path, norm="clade-icpe", **data):
    """A run directory as `python -m train` writes it (tiny synthetic preset, no training)."""
    rcfg = TINY.run_config(norm, param_free_norm="batch", seed=3, data={"synthetic_length": 16, **data},
                           optim=OptimConfig(batch_size=4, steps=10))
    run = RunDirectory(tmp_path / "run")
    run.write_config(rcfg)
    unsaturated_generator(rcfg.generator).save_weights(run.file("generator.weights.h5"))
    return run.path, rcfg.generator, rcfg


def test_int8_calibration_uses_the_runs_data(tmp_path, monkeypatch, capsys):
    from clade_tf.data import pipeline, sources
    from clade_tf.export import converters

    run, cfg, rcfg = make_synthetic_run(tmp_path)
    seen = []
    convert = converters.tflite_bytes

    def spy(fn, names, kind, calibration):
        if kind == "tflite-int8":
            seen.append((names, calibration))
        return convert(fn, names, kind, calibration)

    monkeypatch.setattr(converters, "tflite_bytes", spy)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "tflite-int8",
                        "--calibration-samples", "5"]) == 0
    stdout = capsys.readouterr().out
    assert "notice: int8 calibration" not in stdout and "int8 calibration: run data (5 samples)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"] == "run data (5 samples)"
    assert report["formats"]["model_int8.tflite"]["ok"]
    # the calibration inputs are the first 5 samples of the run's training stream
    (names, [calib]), = seen
    assert names == ["label", "instance", "dist"] and sorted(calib) == sorted(names)
    source = sources.SyntheticSource(TINY.num_classes, 32, 32, rcfg.data.synthetic_length, rcfg.seed,
                                     use_dist=True)
    ds = pipeline.make_dataset(source, 5, 32, 32, seed=rcfg.seed, shuffle=True, use_instance=True,
                               use_dist=True, num_steps=1)
    first = next(iter(ds))
    for k in names:
        np.testing.assert_array_equal(calib[k], first[k].numpy())
    assert len(np.unique(calib["label"])) > 2  # real label maps, several classes
    # every format is verified on the 8 samples that follow the calibration samples
    assert report["verification"] == "run data, after the first 5 (8 samples)"
    ds = pipeline.make_dataset(source, 13, 32, 32, seed=rcfg.seed, shuffle=True, use_instance=True,
                               use_dist=True, num_steps=1)
    stream = next(iter(ds))
    check = exporter.check_inputs(cfg, rcfg.data, rcfg.seed, 5, 8)
    for k in names:
        np.testing.assert_array_equal(check[k], stream[k].numpy()[5:])


def test_explain_int8_measures_each_layer_group_alone(tmp_path, capsys):
    from clade_tf.export import int8

    run, _, _ = make_synthetic_run(tmp_path, norm="clade", synthetic_length=24)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "tflite-int8", "--calibration-samples", "8",
                        "--explain-int8"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    rows = report["int8_layers"]
    g, _ = RunDirectory(run).load_generator()
    assert sorted(r["group"] for r in rows) == sorted(int8.layer_groups(g))  # every group has ops
    assert [r["psnr_db"] for r in rows] == sorted(r["psnr_db"] for r in rows)  # worst first
    full = report["formats"]["model_int8.tflite"]
    for r in rows:
        assert r["ops"] > 0 and np.isfinite(r["psnr_db"])
        # one group in int8 loses less than all of them (1 dB of slack: errors interact)
        assert r["psnr_db"] > full["psnr_db"] - 1.0, (r, full)
        assert re.search(rf"int8 in {r['group']} +only", stdout)
    assert max(r["rel_l2"] for r in rows) > 0.2 * full["rel_l2"]  # the worst group is a real part of it
    # refused without the int8 format, in one line
    assert export_main(["--run", run, "--out", str(tmp_path / "e2"), "--formats", "tflite-fp32",
                        "--explain-int8"]) == 2
    assert "error: --explain-int8 needs tflite-int8 in --formats" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


def test_int8_groups_follow_the_layer_names():
    from clade_tf.export.int8 import OTHER, group_of

    groups = ["fc", "head_0", "G_middle_0", "up_0", "up_3", "conv_img", OTHER]
    assert group_of("generator_1/up_3_1/norm_1_1/mul", groups) == "up_3"
    assert group_of("generator_1/G_middle_0_1/conv_0_1/add;generator_1/G_middle_0_1/conv_0_1/Conv2D", groups) \
        == "G_middle_0"
    assert group_of("generator_1/fc_1/add;generator_1/fc_1/Conv2D", groups) == "fc"
    assert group_of("generator_1/conv_img_1/add", groups) == "conv_img"
    assert group_of("generator_1/up_0/mul", groups) == "up_0"  # no scope suffix
    assert group_of("generator_1/ResizeNearestNeighbor_2", groups) == OTHER
    assert group_of("Identity", groups) == OTHER


def write_folder_dataset(root, n=3, classes=6, size=32):
    """A `custom`-layout dataset (images/, labels/, instances/); returns its label maps."""
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = []
    for sub in ("images", "labels", "instances"):
        os.makedirs(os.path.join(root, sub))
    for i in range(n):
        lab = np.kron(rng.integers(0, classes, (4, 4)), np.ones((size // 4, size // 4), np.int64)).astype(np.uint8)
        Image.fromarray(lab).save(os.path.join(root, "labels", f"x{i}.png"))
        Image.fromarray(lab).save(os.path.join(root, "instances", f"x{i}.png"))
        Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).save(
            os.path.join(root, "images", f"x{i}.png"))
        labels.append(lab)
    return labels


def test_calibration_falls_back_to_random_labels_when_the_data_is_missing(tmp_path):
    gone = str(tmp_path / "gone")
    # a folder dataset, whose folder is gone
    run, cfg, rcfg = make_synthetic_run(tmp_path, dataroot=gone, dataset="custom")
    data = RunDirectory(run).read_config().data
    inputs, source, reason = exporter.calibration_inputs(cfg, 4, data, rcfg.seed)
    assert source == "random blocky labels" and f"--dataroot {gone} does not exist" in reason
    assert len(inputs) == 4 and all(d["label"].shape == (1, 32, 32) for d in inputs)
    # --calibration-dataroot replaces the recorded folder
    labels = write_folder_dataset(str(tmp_path / "moved"))
    data = dataclasses.replace(data, dataroot=str(tmp_path / "moved"))
    inputs, source, reason = exporter.calibration_inputs(cfg, 4, data, rcfg.seed)
    assert (source, reason) == ("run data (3 samples)", None)
    [data] = inputs
    assert sorted(data) == ["dist", "instance", "label"]
    for lab in data["label"]:  # each one of the dataset's label maps (maybe flipped, as in training)
        assert any(np.array_equal(lab, x) or np.array_equal(lab, x[:, ::-1]) for x in labels)


def test_fp16_and_int8_are_measured_against_fp32_tflite(tmp_path, monkeypatch, capsys):

    run, _, _ = make_synthetic_run(tmp_path, norm="clade")
    outputs = {}
    load_runner = exporter.load_runner

    def spy(path):
        runner = load_runner(path)

        def run(inputs):
            out = runner(inputs)
            if os.path.basename(path) == exporter.REFERENCE_TFLITE:
                out = -3 * out  # 4/3 relative L2 from the Keras model, and saturated where Keras is not
            outputs[os.path.basename(path)] = out
            return out
        return run

    monkeypatch.setattr(exporter, "load_runner", spy)
    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 5.0)  # let the altered reference pass its own check
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "tflite-fp16,tflite-int8"]) == 1
    stdout, stderr = capsys.readouterr()
    assert "notice: int8 calibration" not in stdout
    # 16 samples, all used by the calibration: none are left to verify on, so blocky labels, with a notice
    assert "notice: verification on blocky random label maps, not the training data: the data has 16" in stdout
    assert "error: model_fp16.tflite, model_int8.tflite failed verification" in stderr
    # the fp32 reference was converted and run, then removed
    assert sorted(outputs) == sorted([exporter.REFERENCE_TFLITE, "model_fp16.tflite", "model_int8.tflite"])
    assert sorted(os.listdir(out)) == ["model_fp16.tflite", "model_int8.tflite", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"] == "run data (16 samples)"  # all 16 of the run's synthetic data
    assert report["verification"] == "random blocky labels (2 samples)"
    g, _ = RunDirectory(run).load_generator()
    check = exporter.example_inputs(g.config, 1, seed=1, n_batches=2)
    keras_out = keras_output(g, {k: np.concatenate([d[k] for d in check]) for k in check[0]})
    ref = outputs[exporter.REFERENCE_TFLITE]
    for kind in ("tflite-fp16", "tflite-int8"):
        name = runtime.FORMATS[kind]
        entry = report["formats"][name]
        err, psnr = exporter.compare(outputs[name], ref)
        assert entry["reference"] == "tflite fp32" and entry["rel_l2"] == pytest.approx(err)
        assert entry["psnr_db"] == pytest.approx(psnr)
        # far from the altered reference: over its limit, kept, marked and shown as failed ...
        assert entry["rel_l2"] > 1.3 and entry["limit"] == exporter.tolerance(kind) and entry["ok"] is False
        assert re.search(rf"^{re.escape(name)} .*FAILED$", stdout, re.MULTILINE), stdout
        # ... while the file itself is within its limit of the Keras model
        assert exporter.compare(outputs[name], keras_out)[0] <= exporter.tolerance(kind)
        assert entry["saturated_fraction"] == pytest.approx(np.mean(np.abs(ref) > 0.99))
    assert np.mean(np.abs(ref) > 0.99) > 0.1 > np.mean(np.abs(keras_out) > 0.99)


def test_int8_calibration_with_weights_uses_the_presets_data(tiny_synthetic, tmp_path, monkeypatch, capsys):
    """--weights + --preset: synthetic data needs no files, a folder preset is read from
    --calibration-dataroot."""
    from clade_tf.data import pipeline, sources
    from clade_tf.export import converters

    seen = []
    convert = converters.tflite_bytes

    def spy(fn, names, kind, calibration):
        if kind == "tflite-int8":
            seen.append((names, calibration))
        return convert(fn, names, kind, calibration)

    monkeypatch.setattr(converters, "tflite_bytes", spy)
    cfg = tiny_synthetic.generator_config("clade", param_free_norm="batch")
    weights = str(tmp_path / "G.weights.h5")
    unsaturated_generator(cfg).save_weights(weights)
    out = tmp_path / "exp"
    assert export_main(["--weights", weights, "--preset", "synthetic", "--param-free-norm", "batch",
                        "--out", str(out), "--formats", "tflite-int8", "--calibration-samples", "4"]) == 0
    stdout = capsys.readouterr().out
    assert "notice: int8 calibration" not in stdout and "int8 calibration: synthetic data (4 samples)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"] == "synthetic data (4 samples)" and report["formats"]["model_int8.tflite"]["ok"]
    # the first 4 samples of the stream `python -m train --dataset synthetic` trains on
    rcfg = tiny_synthetic.run_config("clade", param_free_norm="batch")
    source = sources.SyntheticSource(cfg.num_classes, 32, 32, rcfg.data.synthetic_length, rcfg.seed)
    first = next(iter(pipeline.make_dataset(source, 4, 32, 32, seed=rcfg.seed, shuffle=True, use_instance=True,
                                            num_steps=1)))
    (names, [calib]), = seen
    for k in names:
        np.testing.assert_array_equal(calib[k], first[k].numpy())

    # a folder preset: its label maps come from --calibration-dataroot
    custom = presets.CUSTOM.replace(image_height=32, image_width=32, load_size=32, ngf=4)
    monkeypatch.setitem(presets.PRESETS, "custom", custom)
    ccfg = presets.custom_preset(6, use_instance=True).generator_config("clade", param_free_norm="batch")
    unsaturated_generator(ccfg).save_weights(weights)
    labels = write_folder_dataset(str(tmp_path / "data"))
    seen.clear()
    assert export_main(["--weights", weights, "--preset", "custom", "--label-nc", "6", "--use-instance",
                        "--param-free-norm", "batch", "--calibration-dataroot", str(tmp_path / "data"),
                        "--out", str(out), "--force", "--formats", "tflite-int8"]) == 0
    assert "notice: int8 calibration" not in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["calibration"] == "custom data (3 samples)"
    (names, [calib]), = seen
    assert len(calib["label"]) == 3
    for lab in calib["label"]:  # each one of the dataset's label maps (maybe flipped, as in training)
        assert any(np.array_equal(lab, x) or np.array_equal(lab, x[:, ::-1]) for x in labels)


def test_force_never_deletes_what_is_not_an_earlier_export(tmp_path, monkeypatch, capsys):
    run, _ = make_run(tmp_path, norm_mode="clade")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    cases = [
        (".", "--out . is the current directory or a parent of it"),
        (str(tmp_path.parent), "is the current directory or a parent of it"),
        (run, f"--out {run} would replace the input {run}"),
        ("mine", "--force replaces only an earlier export; mine is not an output of this project, so it is kept"),
        ("file", "--out file is a file, not a directory"),
    ]
    for out, message in cases:
        assert export_main(["--run", run, "--out", out, "--formats", "tflite", "--force"]) == 2, out
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("error: ") and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["file", "mine", "run"]
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x" and os.listdir(run)


def test_infer_leaves_the_dontcare_class_without_position(tmp_path):
    """A CLADE-ICPE model of a dataset with a don't-care class was trained with positional maps
    that leave that class at zero: export records the class, infer computes the map the same way."""
    from PIL import Image

    from clade_tf.data.icpe import icpe_distance_map
    from export.infer import main as infer_main

    run, _ = make_run(tmp_path, dontcare=True)
    out = tmp_path / "exp"
    assert export_main(["--run", run, "--out", str(out), "--formats", "tflite"]) == 0
    assert json.loads((out / "report.json").read_text())["contract"]["dontcare_class"] == 4
    lab = np.kron(np.array([[4, 4, 1, 2], [4, 4, 3, 0], [0, 1, 4, 4], [2, 3, 4, 4]]),
                  np.ones((8, 8), np.int64)).astype(np.uint8)
    inst = np.zeros_like(lab)
    Image.fromarray(lab).save(tmp_path / "label.png")
    Image.fromarray(inst).save(tmp_path / "inst.png")
    g, _ = RunDirectory(run).load_generator()

    def expected(ignore):
        y = keras_output(g, {"label": lab[None].astype(np.int32), "instance": inst[None].astype(np.int32),
                             "dist": icpe_distance_map(lab.astype(np.int32), ignore)[None]})[0]
        return np.clip(np.rint((y + 1) * 127.5), 0, 255)

    assert infer_main(["--model", str(out), "--labels", str(tmp_path / "label.png"),
                       "--instances", str(tmp_path / "inst.png"), "--out", str(tmp_path / "o.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "o.png")).astype(np.int64)
    assert np.abs(img - expected(4)).max() <= 1
    assert np.abs(img - expected(None)).max() > 2  # the map with a positioned don't-care differs
