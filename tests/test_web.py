"""The browser demo (python -m export.web): the site's contents, its error paths, and in a real
headless Chromium (tests/web_driver.mjs) mouse strokes -> the page's model run, whose output
pixels must equal the Python runner's (`load_runner`) on the label map read back from the page
within `TOLERANCE` grey levels; label PNG loading, instance ids, CLADE-ICPE's positional map."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clade_tf import presets, viz
from clade_tf.data import synthetic
from clade_tf.data.icpe import icpe_distance_map, instance_edge_map
from clade_tf.export import exporter, load_runner
from clade_tf.export import web as libweb
from export.web import main as web_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Output pixels (uint8) of the page vs the Python runner, same model file: fp32 on another build of
# the same kernels (XNNPACK in WebAssembly, onnxruntime-web) may round differently; measured 0.
TOLERANCE = 2
SIZE = 64
SCREENSHOT = os.path.join(ROOT, "assets", "web_demo.png")


def browser_available():
    missing = [p for p in (CHROMIUM, os.path.join(ROOT, "node_modules", "playwright-core"),
                           os.path.join(ROOT, "node_modules", "@litertjs", "core")) if not os.path.exists(p)]
    if missing and os.environ.get("CI"):
        pytest.fail(f"{missing[0]} missing: .ci/run installs chromium and runs npm ci")
    if missing:
        pytest.skip(f"{missing[0]} missing (apt-get install chromium; npm ci)")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The synthetic preset's generator (instance edges) and its CLADE-ICPE variant at ngf 4,
    random weights that do not saturate tanh (as a trained model's), exported fp32."""
    from test_export import unsaturated_generator

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, norm, vae, formats in (("clade", "clade", False, ["tflite-fp32", "onnx"]),
                                     ("clade-icpe", "clade-icpe", False, ["tflite-fp32"]),
                                     ("vae", "clade", True, ["tflite-fp32"])):
        cfg = presets.SYNTHETIC.replace(ngf=4).generator_config(norm, use_vae=vae)
        out[name] = str(root / name)
        exporter.export(unsaturated_generator(cfg), out[name], formats)
    return out


def run_page(site, steps, tmp_path):
    """Serves `site`, runs the driver's steps in Chromium, returns its result dict. A working
    page logs no console errors: the runtimes' own log lines go to their levels."""
    server = libweb.serve(site, 0, background=True)
    try:
        plan, result = tmp_path / "plan.json", tmp_path / "result.json"
        plan.write_text(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}/", "steps": steps}))
        p = subprocess.run(["node", os.path.join(ROOT, "tests", "web_driver.mjs"), str(plan), str(result)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert p.returncode == 0, p.stderr[-3000:]
        r = json.loads(result.read_text())
    finally:
        server.shutdown()
        server.server_close()
    assert r["console"] == [], r["console"]
    return r


def check_output(read, model, inputs):
    """The page's output canvas vs the Python runner on the page's own inputs."""
    page = np.array(read["output"], np.uint8).reshape(SIZE, SIZE, 4)
    assert (page[..., 3] == 255).all()
    want = viz.to_uint8(load_runner(model)({k: v[None] for k, v in inputs.items()})[0])
    diff = np.abs(page[..., :3].astype(int) - want.astype(int))
    assert diff.max() <= TOLERANCE, f"max diff {diff.max()} grey levels"
    assert want.std() > 10  # a real image, not a flat one that any runtime would match


def page_inputs(read):
    lab = np.array(read["label"], np.int32).reshape(SIZE, SIZE)
    x = {"label": lab}
    if read["instance"] is not None:
        x["instance"] = np.array(read["instance"], np.int32).reshape(SIZE, SIZE)
    if read["dist"] is not None:
        x["dist"] = np.array(read["dist"], np.float32).reshape(SIZE, SIZE, 2)
    if read["z"] is not None:
        x["z"] = np.array(read["z"], np.float32)
    return x


def check_instances(x):
    """Instance ids = connected regions of each class: the same edges as scipy's 8-connected
    components (the model sees instances only through their edges)."""
    from scipy import ndimage

    comp = np.zeros_like(x["label"])
    n = 0
    for c in np.unique(x["label"]):
        lab, k = ndimage.label(x["label"] == c, structure=np.ones((3, 3)))
        comp[lab > 0] = lab[lab > 0] + n
        n += k
    assert (instance_edge_map(x["instance"]) == instance_edge_map(comp)).all()
    assert len(np.unique(x["instance"])) == n


STROKES = [
    {"op": "paint", "cls": 3, "size": 4, "points": [[6, 6], [30, 12], [50, 40]]},
    {"op": "paint", "cls": 4, "size": 8, "points": [[10, 50], [40, 56]]},
    {"op": "read", "name": "painted"},
]


@pytest.mark.slow
def test_painting_in_chromium_matches_python(exports, tmp_path):
    browser_available()
    site = str(tmp_path / "site")
    assert web_main(["--export", exports["clade"], "--out", site]) == 0
    png, bad = tmp_path / "label.png", tmp_path / "bad.png"
    loaded = synthetic.make_sample(7, 0, 6, SIZE, SIZE)["label"]
    viz.save_png(str(png), loaded.astype(np.uint8))
    viz.save_png(str(bad), np.full((SIZE, SIZE), 9, np.uint8))  # class 9 of a 6-class model
    steps = STROKES + [
        {"op": "fill", "cls": 5, "x": 63, "y": 0}, {"op": "read", "name": "filled"},
        {"op": "undo"}, {"op": "read", "name": "undone"},
        {"op": "paint", "tool": "eraser", "size": 4, "points": [[6, 6], [6, 20]]}, {"op": "read", "name": "erased"},
        {"op": "load", "file": str(bad), "error": "refused"},
        {"op": "load", "file": str(png)}, {"op": "read", "name": "loaded"},
        {"op": "paint", "cls": 1, "size": 2, "points": [[32, 5], [32, 60]]},
        {"op": "screenshot", "path": str(tmp_path / "shot.png")},
    ]
    r = run_page(site, steps, tmp_path)
    assert r["backend"].startswith("LiteRT.js")
    model = os.path.join(site, "model", "model_fp32.tflite")
    painted = page_inputs(r["painted"])
    # the strokes landed where the mouse went (label-map pixels under the stroke's ends)
    assert painted["label"][6, 6] == 3 and painted["label"][40, 50] == 3 and painted["label"][50, 10] == 4
    for name in ("painted", "filled", "erased", "loaded"):
        x = page_inputs(r[name])
        check_instances(x)
        check_output(r[name], model, x)
    filled = page_inputs(r["filled"])["label"]
    assert filled[0, 63] == 5 and (filled != painted["label"]).any()
    assert (page_inputs(r["undone"])["label"] == painted["label"]).all()
    erased = page_inputs(r["erased"])["label"]
    assert erased[6, 6] == 0 and erased[20, 6] == 0  # the eraser paints class 0 where there is no don't-care
    assert r["refused"] == "bad.png: pixel (0, 0) is class 9, the model knows 0..5"
    assert (page_inputs(r["loaded"])["label"] == loaded).all()
    assert "ms" in r["painted"]["status"] and "LiteRT.js" in r["painted"]["status"]
    shutil.copyfile(tmp_path / "shot.png", SCREENSHOT)


@pytest.mark.slow
def test_the_page_says_what_it_shows(exports, tmp_path):
    """The captions follow the map and the tool, the footer keeps the model, a grey RGB label
    PNG reads as class ids, and LiteRT.js's log is no error on a working page."""
    from PIL import Image

    browser_available()
    site = str(tmp_path / "site")
    assert web_main(["--export", exports["clade"], "--out", site]) == 0
    labels = synthetic.make_sample(7, 0, 6, SIZE, SIZE)["label"].astype(np.uint8)
    assert labels.max() > 0
    grey, bad = tmp_path / "grey_rgb.png", tmp_path / "too_high.png"
    Image.fromarray(labels).convert("RGB").save(grey)  # a label PNG saved as RGB: R = G = B = class id
    high = labels.copy()
    high[5, 9] = 255  # one id beyond the 6 classes, not at (0, 0)
    Image.fromarray(high).convert("RGB").save(bad)
    steps = [
        {"op": "text", "name": "start"},
        {"op": "tool", "tool": "eraser"}, {"op": "text", "name": "eraser"},
        {"op": "tool", "tool": "fill"}, {"op": "text", "name": "fill"},
        {"op": "clear"}, {"op": "read", "name": "cleared"},
        {"op": "undo"}, {"op": "text", "name": "undone"},
        {"op": "paint", "cls": 3, "size": 4, "points": [[6, 6], [30, 12]]}, {"op": "text", "name": "edited"},
        {"op": "load", "file": str(bad), "error": "refused"}, {"op": "text", "name": "after refusal"},
        {"op": "load", "file": str(grey)}, {"op": "read", "name": "grey"},
        {"op": "example", "n": 2}, {"op": "text", "name": "example 2"},
    ]
    r = run_page(site, steps, tmp_path)
    footer = r["start"]["footer"]
    assert footer.startswith("model/model_fp32.tflite (64x64, 6 classes, synthetic) loaded in")
    # the start: example 1, and how to start blank
    assert r["start"]["caption"] == "label map: example 1 (paint over it, or Clear to start blank)\npainting 1 grass"
    assert r["eraser"]["caption"].endswith("\nerasing (paints 0 sky)")
    assert r["fill"]["caption"].endswith("\nfilling with 1 grass")
    assert r["cleared"]["caption"].startswith("label map: blank (all 0 sky)\n")
    assert (np.array(r["cleared"]["label"]) == 0).all()
    assert r["undone"]["caption"] == r["fill"]["caption"]  # undo brings the map's caption back with it
    assert r["edited"]["caption"] == "label map: example 1, edited\npainting 3 sand"
    assert r["refused"] == "too_high.png: pixel (9, 5) is class 255, the model knows 0..5"
    assert r["after refusal"]["caption"] == r["edited"]["caption"]  # the map is unchanged, and says so
    assert r["grey"]["caption"] == "label map: grey_rgb.png\npainting 3 sand"
    assert (page_inputs(r["grey"])["label"] == labels).all()
    assert r["example 2"]["caption"].startswith("label map: example 2\n")
    assert all(r[name]["footer"] == footer for name in ("cleared", "after refusal", "grey", "example 2"))
    # LiteRT.js's native log reaches the console at its own level (run_page: no errors), not dropped
    assert any(m.startswith("debug: INFO: Created TensorFlow Lite XNNPACK delegate") for m in r["messages"])
    # no adapter in headless Chromium: information from the page, not LiteRT.js's warning (the
    # browser's own "No available adapters." warning is outside the page's reach)
    assert not [m for m in r["messages"] if "No GPU adapter" in m or "Failed to create default WebGPU" in m]
    assert "info: LiteRT.js: no WebGPU adapter, the model runs on the CPU" in r["messages"]


@pytest.mark.slow
def test_icpe_map_computed_in_the_page_equals_python(exports, tmp_path):
    browser_available()
    site = str(tmp_path / "site")
    assert web_main(["--export", exports["clade-icpe"], "--out", site]) == 0
    r = run_page(site, STROKES, tmp_path)
    x = page_inputs(r["painted"])
    np.testing.assert_array_equal(x["dist"], icpe_distance_map(x["label"]))
    check_output(r["painted"], os.path.join(site, "model", "model_fp32.tflite"), x)


@pytest.mark.slow
def test_vae_model_new_style(exports, tmp_path):
    browser_available()
    site = str(tmp_path / "site")
    assert web_main(["--export", exports["vae"], "--out", site]) == 0
    r = run_page(site, STROKES + [{"op": "style"}, {"op": "read", "name": "restyled"}], tmp_path)
    model = os.path.join(site, "model", "model_fp32.tflite")
    a, b = page_inputs(r["painted"]), page_inputs(r["restyled"])
    assert a["z"].shape == (256,) and abs(a["z"].std() - 1) < 0.2 and not np.allclose(a["z"], b["z"])
    assert (a["label"] == b["label"]).all()
    for read, x in ((r["painted"], a), (r["restyled"], b)):
        check_output(read, model, x)
    assert not np.array_equal(r["painted"]["output"], r["restyled"]["output"])


@pytest.mark.slow
def test_onnxruntime_web_runtime(exports, tmp_path):
    browser_available()
    site = str(tmp_path / "site")
    assert web_main(["--export", exports["clade"], "--out", site, "--runtime", "ort"]) == 0
    assert sorted(os.listdir(os.path.join(site, "vendor"))) == ["ort"]
    r = run_page(site, STROKES, tmp_path)
    assert r["backend"].startswith("onnxruntime-web")
    check_output(r["painted"], os.path.join(site, "model", "model.onnx"), page_inputs(r["painted"]))


def fake_export(path, gen=None, models=("model_fp32.tflite",)):
    """An export directory's shape (report + model files) without converting a model."""
    os.makedirs(path)
    gen = gen or presets.SYNTHETIC.generator_config("clade").to_dict()
    with open(os.path.join(path, "report.json"), "w") as f:
        json.dump({"contract": {"inputs": ["label", "instance"]}, "generator": gen}, f)
    for m in models:
        with open(os.path.join(path, m), "wb") as f:
            f.write(b"model bytes")
    return str(path)


def test_site_contents_and_classes(tmp_path):
    if not os.path.isfile(os.path.join(libweb.node_modules(), "@litertjs", "core", "dist", "index.js")):
        pytest.skip("npm ci has not installed the runtimes")
    exp = fake_export(tmp_path / "exp")
    site = str(tmp_path / "site")
    assert web_main(["--export", exp, "--out", site]) == 0
    with open(os.path.join(site, "demo.json")) as f:
        cfg = json.load(f)
    assert cfg["preset"] == "synthetic" and cfg["runtime"] == "litert" and cfg["model"] == "model/model_fp32.tflite"
    assert [c["name"] for c in cfg["classes"]] == synthetic.CLASS_NAMES[:6]
    with open(os.path.join(site, cfg["model"]), "rb") as f:
        assert f.read() == b"model bytes"
    for path in cfg["examples"]:  # class-id PNGs, as export.infer reads them
        from PIL import Image

        a = np.asarray(Image.open(os.path.join(site, path)))
        assert a.shape == (SIZE, SIZE) and a.max() < 6
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n] == []
    # rebuilding needs --force, and replaces only a site
    assert web_main(["--export", exp, "--out", site]) == 2
    assert web_main(["--export", exp, "--out", site, "--force"]) == 0
    # the public datasets' names, with the don't-care class last
    assert libweb.class_names("ade20k", 151)[:3] == ["wall", "building", "sky"]
    assert libweb.class_names("ade20k", 151)[-1] == "don't care"
    assert libweb.class_names("cityscapes", 35)[26] == "car"
    coco = libweb.class_names("coco-stuff", 183)
    assert coco[0] == "person" and coco[181] == "wood" and coco[182] == "don't care"
    assert libweb.class_names(None, 3) == ["class 0", "class 1", "class 2"]


def test_error_paths(tmp_path, capsys, monkeypatch):
    exp = fake_export(tmp_path / "exp")

    def err(*argv):
        assert web_main(list(argv)) == 2
        return capsys.readouterr().err.strip()

    assert err("--export", str(tmp_path / "nope"), "--out", str(tmp_path / "s")) == \
        f"error: --export {tmp_path / 'nope'} not found"
    assert "is a file" in err("--export", str(tmp_path / "exp" / "report.json"), "--out", str(tmp_path / "s"))
    os.makedirs(tmp_path / "empty")
    assert "no report.json" in err("--export", str(tmp_path / "empty"), "--out", str(tmp_path / "s"))
    nomodel = fake_export(tmp_path / "nomodel", models=())
    assert "holds no .tflite or .onnx" in err("--export", nomodel, "--out", str(tmp_path / "s"))
    assert "holds no model.onnx" in err("--export", exp, "--out", str(tmp_path / "s"), "--runtime", "ort")
    assert "--model model.onnx" in err("--export", exp, "--out", str(tmp_path / "s"), "--model", "model.onnx")
    assert "--model x.bin" in err("--export", exp, "--out", str(tmp_path / "s"), "--model", "x.bin")
    bad = tmp_path / "bad"
    os.makedirs(bad)
    (bad / "report.json").write_text("{not json")
    assert str(bad / "report.json") in err("--export", str(bad), "--out", str(tmp_path / "s"))
    (bad / "report.json").write_text('{"generator": {"num_classes": 6}, "contract": {"inputs": ["label"]}}')
    assert err("--export", str(bad), "--out", str(tmp_path / "s")) == \
        f"error: {bad / 'report.json'}: not an export report (KeyError: 'image_height')"
    assert "--preset ade20k has 151 classes" in err("--export", exp, "--out", str(tmp_path / "s"),
                                                    "--preset", "ade20k")
    if os.path.isdir(os.path.join(libweb.node_modules(), "@litertjs")):
        (tmp_path / "file").write_text("user data")
        assert "is a file" in err("--export", exp, "--out", str(tmp_path / "file"))
        assert (tmp_path / "file").read_text() == "user data"
        user = tmp_path / "user"
        os.makedirs(user)
        (user / "notes.txt").write_text("user data")
        assert "not empty" in err("--export", exp, "--out", str(user))
        assert "is kept" in err("--export", exp, "--out", str(user), "--force")
        assert (user / "notes.txt").read_text() == "user data"
        assert "would replace the input" in err("--export", exp, "--out", exp, "--force")
        assert os.path.isfile(os.path.join(exp, "report.json"))
    assert not os.path.exists(tmp_path / "s")
    # the runtimes missing: one line naming the file and the command that installs them
    with monkeypatch.context() as m:
        m.setenv("CLADE_TF_NODE_MODULES", str(tmp_path / "no_modules"))
        assert "npm ci" in err("--export", exp, "--out", str(tmp_path / "s"))
    assert not os.path.exists(tmp_path / "s")
    assert web_main(["--export", exp, "--out", str(tmp_path / "s"), "--port", "70000", "--serve"]) == 2
    assert "--port 70000" in capsys.readouterr().err


def test_serve_errors_and_headers(tmp_path):
    import urllib.request

    with pytest.raises(libweb.WebError, match="no index.html"):
        libweb.serve(str(tmp_path), 0)
    (tmp_path / "index.html").write_text("<p>demo</p>")
    server = libweb.serve(str(tmp_path), 0, background=True)
    try:
        port = server.server_address[1]
        with pytest.raises(libweb.WebError, match=f"--port {port}: cannot listen"):
            libweb.serve(str(tmp_path), port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:  # multi-threaded WebAssembly needs these
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.shutdown()
        server.server_close()


def test_preset_from_the_model():
    def gen(preset, **kw):
        return {**presets.PRESETS[preset].generator_config("clade").to_dict(), **kw}

    assert libweb.guess_preset(gen("ade20k")) == "ade20k"
    assert libweb.guess_preset(gen("cityscapes")) == "cityscapes"
    assert libweb.guess_preset(gen("coco-stuff")) == "coco-stuff"
    assert libweb.guess_preset(gen("synthetic-scenes")) == "synthetic-scenes"
    assert libweb.guess_preset(gen("synthetic", image_height=32, image_width=32)) == "synthetic"
    assert libweb.guess_preset(gen("custom", num_classes=77)) is None


def test_web_benchmark_arguments_and_table(capsys):
    from benchmarks import web as bweb

    with pytest.raises(SystemExit):
        bweb.parse_args(["--formats", "saved_model"])
    capsys.readouterr()
    assert bweb.parse_args(["--formats", "onnx,tflite-fp32"]).formats == ["onnx", "tflite-fp32"]
    row = {"format": "onnx", "size_bytes": 2e6, "native_ms": 10.0, "browser_ms": 25.0, "load_ms": 900.0,
           "browser_rss_mb": 700.0, "backend": "onnxruntime-web, WebAssembly, 2 threads", "browser_error": None,
           "native_error": None}
    failed = {**row, "format": "tflite-int8", "browser_ms": None, "backend": None, "browser_rss_mb": None,
              "browser_error": "page: out of memory"}
    table = bweb.format_table({"preset": "synthetic", "norm": "clade", "params": 1000, "threads": 2, "repeats": 5,
                               "machine": "x", "results": [row, failed]})
    assert "| onnx | 2.00 MB | 10.0 | 25.0 | 2.50× | 900.0 | 700 MB | onnxruntime-web" in table
    assert "| tflite-int8 | 2.00 MB | 10.0 | — | — | 900.0 | — | page: out of memory |" in table


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
