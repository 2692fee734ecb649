"""The export directory (`clade_tf.export.ExportDir`), the don't-care class
(`DataConfig.dontcare_class`), the TensorFlow-free runtime import, and `export.infer` on
what a new user hands it: a model copied out of its export, palette-colour and wrong-size
label PNGs, `--instances auto`, an `--out` in a missing folder."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clade_tf import presets
from clade_tf.export import ExportDir, ExportDirError, exportdir, find_model, runtime
from export.__main__ import main as export_main
from export.infer import instance_ids
from export.infer import main as infer_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports (TFLite fp32 + ONNX) of tiny 5-class 32x32 generators with instance
    edges: `clade` (no positional maps) and `icpe` (CLADE-ICPE)."""
    from test_export import make_run

    out = {}
    for norm in ("clade", "clade-icpe"):
        tmp = tmp_path_factory.mktemp(norm)
        run, _ = make_run(tmp, norm_mode=norm)
        assert export_main(["--run", run, "--out", str(tmp / "exp"), "--formats", "tflite-fp32,onnx"]) == 0
        out[norm] = tmp / "exp"
    return out


def label_map():
    """A 32x32 map of 8x8 blocks of the 5 classes."""
    rng = np.random.default_rng(1)
    return np.kron(rng.integers(0, 5, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)


def infer(capsys, *args):
    """`(exit code, stdout, stderr lines)` of export.infer."""
    capsys.readouterr()
    rc = infer_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()


def png(path):
    return np.asarray(Image.open(path)).astype(np.int64)


# ---- the don't-care class -----------------------------------------------------------------------

def test_dontcare_class_of_every_preset():
    # ADE20K's 150 classes and COCO-Stuff's 182 have a don't-care class after them (raw 0 / 255
    # in the datasets); Cityscapes (35 ids) and the procedural datasets have none
    want = {"ade20k": 150, "ade20k-outdoor": 150, "coco-stuff": 182, "cityscapes": None, "custom": None,
            "synthetic": None, "synthetic-scenes": None}
    assert set(want) == set(presets.PRESETS)
    for name, p in presets.PRESETS.items():
        data = p.data_config()
        assert data.dontcare_class == want[name], name
        if data.dontcare_class is not None:  # the last class the model knows
            assert data.dontcare_class == data.num_classes - 1 == p.num_classes - 1
    assert presets.custom_preset(4, contain_dontcare=True).data_config().dontcare_class == 4
    assert presets.custom_preset(4).data_config().dontcare_class is None


def test_the_dontcare_class_is_derived_in_one_place():
    """No module but `DataConfig.dontcare_class` derives it from `contain_dontcare`
    (`label_nc if contain_dontcare else None`, `num_classes - 1 if ... contain_dontcare ...`)."""
    derivation = re.compile(r"contain_dontcare[^\n]*else None")
    found = []
    for top in ("clade_tf", "export", "evaluate", "train", "benchmarks"):
        for parent, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(parent, name)
                    with open(path) as f:
                        if derivation.search(f.read()):
                            found.append(os.path.relpath(path, ROOT))
    # the data loaders' LabelSpec is handed DataConfig.dontcare_class; everything else calls the property
    assert found == ["clade_tf/config.py"], found


# ---- the export directory -----------------------------------------------------------------------

def test_export_dir_reads_the_report_and_names_its_files(exports):
    exp = ExportDir(exports["clade-icpe"])
    report = json.loads((exports["clade-icpe"] / "report.json").read_text())
    assert exp.report == report
    assert exp.inputs == ["label", "instance", "dist"]
    assert (exp.height, exp.width, exp.num_classes, exp.dontcare_class) == (32, 32, 5, None)
    assert exp.formats() == ["tflite-fp32", "onnx"]
    assert exp.file("onnx") == str(exports["clade-icpe"] / "model.onnx")
    assert exp.fp32_model() == str(exports["clade-icpe"] / "model_fp32.tflite")
    # every format's file name comes from runtime.FORMATS
    assert all(os.path.basename(exp.file(k)) == runtime.FORMATS[k] for k in runtime.FORMATS)


def test_find_model_in_and_out_of_an_export(exports, tmp_path):
    d = exports["clade"]
    model, exp = find_model(d)
    assert model == str(d / "model_fp32.tflite") and exp.path == str(d)
    model, exp = find_model(d / "model.onnx")
    assert model == str(d / "model.onnx") and exp.path == str(d)
    shutil.copy(d / "model.onnx", tmp_path / "copy.onnx")
    assert find_model(tmp_path / "copy.onnx") == (str(tmp_path / "copy.onnx"), None)


def test_export_dir_errors_are_one_line(tmp_path):
    def err(path, **kw):
        with pytest.raises(ExportDirError) as e:
            ExportDir(path, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert err(tmp_path / "nope") == f"--export {tmp_path / 'nope'} not found"
    (tmp_path / "file").write_text("x")
    assert err(tmp_path / "file", flag="--model") == (
        f"--model {tmp_path / 'file'} is a file; name the export directory of python -m export")
    assert err(tmp_path) == f"--export {tmp_path}: no report.json; name a directory written by python -m export"
    (tmp_path / "report.json").write_text("{not json")
    assert err(tmp_path).startswith(f"{tmp_path / 'report.json'}: not an export report (JSONDecodeError: ")
    (tmp_path / "report.json").write_text('{"generator": {"num_classes": 3}, "contract": {"inputs": ["label"]}}')
    assert err(tmp_path) == f"{tmp_path / 'report.json'}: not an export report (KeyError: 'image_height')"
    (tmp_path / "report.json").write_text(
        '{"generator": {"num_classes": 3, "image_height": 8, "image_width": 8}, "contract": {"inputs": ["label"]}}')
    with pytest.raises(ExportDirError, match=r"holds no fp32 model \(model_fp32.tflite, model.onnx, saved_model\)"):
        ExportDir(tmp_path).fp32_model()
    assert exportdir.is_export(tmp_path) and not exportdir.is_export(tmp_path / "file")


# ---- no TensorFlow to run an exported model ------------------------------------------------------

@pytest.mark.slow
def test_runtime_imports_and_runs_models_without_tensorflow(exports):
    d = exports["clade"]
    code = f"""
import sys
import numpy as np
import clade_tf.export.runtime as runtime
from clade_tf.export import FORMATS, ExportDir, load_runner
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "imported with the runtime"
exp = ExportDir({str(d)!r})
x = {{"label": np.zeros((1, 32, 32), np.int32), "instance": np.zeros((1, 32, 32), np.int32)}}
outs = [load_runner(exp.file(k))(x) for k in ("tflite-fp32", "onnx")]
assert outs[0].shape == (1, 32, 32, 3) and np.abs(outs[0] - outs[1]).max() < 1e-3
from benchmarks.common import load_runner as bench_runner  # the benchmarks' timing child
assert np.abs(bench_runner(exp.file("onnx"), threads=1)(x) - outs[1]).max() < 1e-4
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("loaded:", bad)
"""
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "loaded: []" in r.stdout


def test_package_names_load_on_first_use():
    import clade_tf
    import clade_tf.export
    from clade_tf.export import exporter

    assert clade_tf.export.export is exporter.export and clade_tf.export.FORMATS is runtime.FORMATS
    assert clade_tf.get_preset("synthetic") is presets.SYNTHETIC and clade_tf.presets is presets
    assert set(clade_tf.export.__all__) <= set(dir(clade_tf.export))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        clade_tf.export.nothing  # noqa: B018


def test_no_module_is_loaded_by_file_path():
    """benchmarks.common loaded runtime.py by file path to keep TensorFlow out of its timing child;
    a plain import does that now (checked above)."""
    found = []
    for top in ("clade_tf", "export", "evaluate", "train", "benchmarks"):
        for parent, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(parent, name)) as f:
                        text = f.read()
                    if "spec_from_file_location" in text or "SourceFileLoader" in text:
                        found.append(name)
    assert found == []


# ---- export.infer -------------------------------------------------------------------------------

def test_instance_ids_are_the_8_connected_regions_in_raster_order():
    label = np.array([[1, 1, 0, 2],
                      [0, 0, 1, 2],
                      [2, 0, 0, 0],
                      [2, 1, 1, 2]])
    # by hand: regions numbered by their first pixel in raster order; (1,2) touches (0,1) diagonally
    want = np.array([[1, 1, 2, 3],
                     [2, 2, 1, 3],
                     [4, 2, 2, 2],
                     [4, 5, 5, 6]])
    np.testing.assert_array_equal(instance_ids(label), want)


def test_infer_with_auto_instances_and_a_model_copied_out_of_its_export(exports, tmp_path, capsys):
    d = exports["clade"]
    lab = label_map()
    Image.fromarray(lab).save(tmp_path / "label.png")
    Image.fromarray(instance_ids(lab).astype(np.uint8)).save(tmp_path / "inst.png")
    rc, _, _ = infer(capsys, "--model", d, "--labels", tmp_path / "label.png", "--instances", tmp_path / "inst.png",
                     "--out", tmp_path / "given.png")
    assert rc == 0
    want = png(tmp_path / "given.png")
    assert want.std() > 20
    rc, _, err = infer(capsys, "--model", d, "--labels", tmp_path / "label.png", "--instances", "auto",
                       "--out", tmp_path / "auto.png")
    assert rc == 0 and err == []
    np.testing.assert_array_equal(png(tmp_path / "auto.png"), want)
    # one instance for the whole map: other edges, another image
    Image.fromarray(np.zeros_like(lab)).save(tmp_path / "one.png")
    assert infer(capsys, "--model", d, "--labels", tmp_path / "label.png", "--instances", tmp_path / "one.png",
                 "--out", tmp_path / "one_out.png")[0] == 0
    assert np.abs(png(tmp_path / "one_out.png") - want).max() > 2
    for name in ("model_fp32.tflite", "model.onnx"):
        bare = tmp_path / "copied" / name
        bare.parent.mkdir(exist_ok=True)
        shutil.copy(d / name, bare)
        rc, _, err = infer(capsys, "--model", bare, "--labels", tmp_path / "label.png", "--instances", "auto",
                           "--out", tmp_path / f"{name}.png")
        assert rc == 0, err
        assert err == [(f"notice: {bare}: no report.json beside it: inputs and size (32x32) read from the model, "
                        "class ids not checked (copy the export's report.json beside it to check them)")]
        assert np.abs(png(tmp_path / f"{name}.png") - want).max() <= 1
        rc, _, err = infer(capsys, "--model", bare, "--labels", tmp_path / "label.png", "--out", tmp_path / "x.png")
        assert rc == 2 and err[-1] == "error: this model uses instance edges: pass --instances (PNG, folder, or auto)"


def test_infer_runs_an_icpe_model_without_its_report_only_with_its_preset(exports, tmp_path, capsys):
    shutil.copy(exports["clade-icpe"] / "model.onnx", tmp_path / "m.onnx")
    Image.fromarray(label_map()).save(tmp_path / "label.png")
    rc, _, err = infer(capsys, "--model", tmp_path / "m.onnx", "--labels", tmp_path / "label.png",
                         "--instances", "auto", "--out", tmp_path / "o.png")
    assert rc == 2 and err[-1] == (
        f"error: --model {tmp_path / 'm.onnx'}: a CLADE-ICPE model needs the don't-care class of its positional "
        "maps: copy the export's report.json beside the model, name the export directory, or pass --preset NAME "
        "(the dataset it was trained on)")
    assert not (tmp_path / "o.png").exists()
    # with the preset it was trained on (5 classes, none of them don't-care): the export's pixels
    assert infer(capsys, "--model", exports["clade-icpe"], "--labels", tmp_path / "label.png", "--instances", "auto",
                 "--out", tmp_path / "want.png")[0] == 0
    rc, _, err = infer(capsys, "--model", tmp_path / "m.onnx", "--preset", "custom", "--labels",
                       tmp_path / "label.png", "--instances", "auto", "--out", tmp_path / "o.png")
    assert rc == 0, err
    assert np.abs(png(tmp_path / "o.png") - png(tmp_path / "want.png")).max() <= 1


def test_infer_reads_palette_colours_and_resizes_other_sizes(exports, tmp_path, capsys):
    from clade_tf import viz

    d = exports["clade-icpe"]
    lab = label_map()
    Image.fromarray(lab).save(tmp_path / "ids.png")
    assert infer(capsys, "--model", d, "--labels", tmp_path / "ids.png", "--instances", "auto",
                 "--out", tmp_path / "want.png")[0] == 0
    want = png(tmp_path / "want.png")
    # the colours the web page paints the 5 classes with: no preset has 5 classes of 32x32,
    # so the page (and infer) fall back to the custom palette
    colours = viz.palette("custom", 5)
    assert len({tuple(c) for c in colours}) == 5
    Image.fromarray(colours[lab]).save(tmp_path / "rgb.png")
    p = Image.fromarray(lab, mode="L").convert("P")  # indices 0..4 with the palette's colours
    p.putpalette([int(v) for v in colours.ravel()])
    p.save(tmp_path / "indexed.png")
    Image.fromarray(np.kron(lab, np.ones((3, 2), np.uint8))).save(tmp_path / "big.png")  # 64x96
    for name in ("rgb.png", "indexed.png", "big.png"):
        rc, _, err = infer(capsys, "--model", d, "--labels", tmp_path / name, "--instances", "auto",
                           "--out", tmp_path / f"out_{name}")
        assert rc == 0, err
        np.testing.assert_array_equal(png(tmp_path / f"out_{name}"), want)
        if name == "big.png":
            assert err == [f"notice: {tmp_path / 'big.png'}: label map 64x96 resized (nearest) to the model's 32x32"]
        else:
            assert err == []
    bad = colours[lab].copy()
    bad[3, 7] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "bad.png")
    rc, _, err = infer(capsys, "--model", d, "--labels", tmp_path / "bad.png", "--instances", "auto",
                       "--out", tmp_path / "o.png")
    assert rc == 2 and err == [(f"error: {tmp_path / 'bad.png'}: pixel (7, 3) is colour (1, 2, 3), neither a "
                                "class id nor a colour of the palette")]
    # a model copied out of its export has no palette without --preset
    shutil.copy(exports["clade"] / "model.onnx", tmp_path / "m.onnx")
    rc, _, err = infer(capsys, "--model", tmp_path / "m.onnx", "--labels", tmp_path / "rgb.png",
                       "--instances", "auto", "--out", tmp_path / "o.png")
    assert rc == 2 and err[-1] == (
        f"error: {tmp_path / 'rgb.png'}: a colour label map; without the export's report.json the palette is "
        "unknown: pass --preset NAME (its palette) or a single-channel PNG of class ids")


def test_infer_refuses_an_out_in_a_missing_folder_before_loading_the_model(exports, tmp_path, capsys, monkeypatch):
    from clade_tf.export import runtime as rt

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(rt, "load_runner", no_model)
    Image.fromarray(label_map()).save(tmp_path / "label.png")
    out = tmp_path / "missing" / "o.png"
    rc, stdout, err = infer(capsys, "--model", exports["clade"], "--labels", tmp_path / "label.png",
                            "--instances", "auto", "--out", out)
    assert rc == 2 and stdout == ""
    assert err == [f"error: --out {out}: the folder {out.parent} does not exist; create it or name another file"]
    assert sorted(os.listdir(tmp_path)) == ["label.png"]


def test_export_run_that_does_not_exist(tmp_path, capsys):
    assert export_main(["--run", str(tmp_path / "runz"), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --run {tmp_path / 'runz'} not found (expected a run directory of python -m train or "
        "python -m export.from_torch)")
    (tmp_path / "w.h5").write_text("x")
    assert export_main(["--run", str(tmp_path / "w.h5"), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --run {tmp_path / 'w.h5'} is a file, not a run directory (a weights file goes with --weights "
        "and --preset)")
    assert sorted(os.listdir(tmp_path)) == ["w.h5"]


def test_evaluate_takes_the_dontcare_class_of_a_custom_export(exports, tmp_path):
    import argparse

    from evaluate.__main__ import UsageError, load_model

    d = tmp_path / "exp"
    shutil.copytree(exports["clade"], d)
    report = json.loads((d / "report.json").read_text())
    report["contract"]["dontcare_class"] = 4  # a custom dataset of 4 classes + don't-care
    exportdir.write_report(d, report)

    def args(model, dataset="custom"):
        return argparse.Namespace(run=None, model=str(model), dataset=dataset, dataroot=None)

    _, gen_cfg, data, _ = load_model(args(d))
    assert (data.label_nc, data.dontcare_class, data.num_classes) == (4, 4, gen_cfg.num_classes)
    report["contract"]["dontcare_class"] = None
    exportdir.write_report(d, report)
    _, _, data, _ = load_model(args(d / "model.onnx"))
    assert (data.label_nc, data.dontcare_class) == (5, None)
    shutil.copy(d / "model.onnx", tmp_path / "m.onnx")
    with pytest.raises(UsageError) as e:
        load_model(args(tmp_path / "m.onnx"))
    assert str(e.value) == (f"--model {tmp_path / 'm.onnx'}: no report.json beside it (the generator's "
                            "configuration); name the export directory of python -m export, or copy its report.json "
                            "beside the model")
