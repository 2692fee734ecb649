"""The browser demo: an export directory -> a static site that runs the exported model client-side.

`build_site(export_dir, out)` writes `index.html`, its script and style, `demo.json` (the
model's contract, class names and colours, the runtime), the model file, example label maps
and the browser runtime's JS/WASM files, copied from `node_modules/` (installed by `npm ci`
from the committed `package.json` / `package-lock.json`; nothing is fetched at run time).
The site is written to a temporary folder and renamed into place (`clade_tf.outdir`).
`serve(site, port)` serves it with the cross-origin-isolation headers that multi-threaded
WebAssembly needs (any static host works too, single-threaded without those headers).

Runtimes: `litert` runs the `.tflite` (the file a phone gets) with LiteRT.js (XNNPACK
WebAssembly); `ort` runs the `.onnx` with onnxruntime-web (WebAssembly). Both are measured
by `python -m benchmarks.web`; LiteRT.js is the default (the numbers: benchmarks/BENCHMARKS.md).
"""

import functools
import http.server
import importlib.resources
import json
import os
import shutil
import threading

import numpy as np

from clade_tf import resources, viz
from clade_tf.export.exportdir import ExportDir, ExportDirError
from clade_tf.export.runtime import FORMATS
from clade_tf.outdir import OutputError, replace_directory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the page's files: package data of clade_tf.export, read with importlib.resources as installed
SITE_SOURCE = importlib.resources.files("clade_tf.export").joinpath("web_site")
PAGE_FILES = ("index.html", "app.js", "style.css")

# runtime -> (model files of an export it can run, fp32 first; node_modules files -> site paths)
RUNTIMES = {
    "litert": (
        tuple(name for kind, name in FORMATS.items() if kind.startswith("tflite")),  # fp32 first
        {"@litertjs/core/dist/index.js": "vendor/litert/index.js",
         "@litertjs/wasm-utils/dist/index.js": "vendor/litert/wasm-utils.js",
         # the loader picks one of these by the browser's features (threads need isolation)
         **{f"@litertjs/core/wasm/litert_wasm_{v}internal.{ext}": f"vendor/litert/wasm/litert_wasm_{v}internal.{ext}"
            for v in ("", "threaded_", "compat_") for ext in ("js", "wasm")}},
    ),
    "ort": (
        (FORMATS["onnx"],),
        {f"onnxruntime-web/dist/{name}": f"vendor/ort/{name}"
         for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")},
    ),
}
DEFAULT_RUNTIME = "litert"
EXAMPLES = 3


class WebError(ValueError):
    """A bad input of the demo builder; the message names the file or value."""


def node_modules():
    """Where `npm ci` put the runtimes: `$CLADE_TF_NODE_MODULES`, else the checkout's `node_modules/`."""
    return os.environ.get("CLADE_TF_NODE_MODULES") or os.path.join(ROOT, "node_modules")


def read_export(export_dir):
    """The export's `report.json` dict (`ExportDir`); `WebError` unless `export_dir` is an export
    holding a .tflite or .onnx."""
    try:
        report = ExportDir(export_dir, "--export").report
    except ExportDirError as e:
        raise WebError(str(e)) from None
    names = [n for files, _ in RUNTIMES.values() for n in files]
    if not any(os.path.isfile(os.path.join(export_dir, n)) for n in names):
        raise WebError(f"--export {export_dir} holds no .tflite or .onnx model (export with --formats "
                       "tflite-fp32 or onnx)")
    return report


def choose_model(export_dir, runtime=None, model=None):
    """`(runtime, model file name)`: `model` (a file name in the export) picks the runtime by
    its extension; else the runtime's fp32 file, falling back to the other runtime's."""
    if model:
        path = os.path.join(export_dir, model)
        kind = next((r for r, (files, _) in RUNTIMES.items() if model in files), None)
        if kind is None:
            raise WebError(f"--model {model}: expected one of "
                           f"{', '.join(n for files, _ in RUNTIMES.values() for n in files)}")
        if not os.path.isfile(path):
            raise WebError(f"--model {model}: {path} not found")
        if runtime and runtime != kind:
            raise WebError(f"--model {model} runs on the {kind} runtime, not --runtime {runtime}")
        return kind, model
    if runtime and runtime not in RUNTIMES:
        raise WebError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    order = [runtime] if runtime else [DEFAULT_RUNTIME] + [r for r in RUNTIMES if r != DEFAULT_RUNTIME]
    for r in order:
        name = RUNTIMES[r][0][0]
        if os.path.isfile(os.path.join(export_dir, name)):
            return r, name
    wanted = " or ".join(RUNTIMES[r][0][0] for r in order)
    raise WebError(f"--export {export_dir} holds no {wanted}")


def guess_preset(gen):
    """The preset whose class count and size match the generator config dict (None: unknown)."""
    from clade_tf.presets import PRESETS

    for name, p in PRESETS.items():
        if name in ("custom", "ade20k-outdoor"):
            continue
        if p.num_classes == gen["num_classes"] and (p.image_height, p.image_width) == (
                gen["image_height"], gen["image_width"]):
            return name
    for name, p in PRESETS.items():  # another size of a known dataset (e.g. a small test model)
        if name not in ("custom", "ade20k-outdoor") and p.num_classes == gen["num_classes"]:
            return name
    return None


def class_names(preset_name, num_classes):
    """Display names of `num_classes` classes of a preset: the shipped `classes/<dataset>.json`
    of `clade_tf.resources`, the procedural datasets' own lists, a last "don't care" class, else "class i"."""
    from clade_tf.data import scenes, synthetic
    from clade_tf.presets import PRESETS

    names = []
    if preset_name == "synthetic":
        names = list(synthetic.CLASS_NAMES)
    elif preset_name == "synthetic-scenes":
        names = list(scenes.CLASS_NAMES)
    elif preset_name:
        base = "ade20k" if preset_name == "ade20k-outdoor" else preset_name
        data = resources.read_json("classes", f"{base}.json")
        if data is not None:
            names = data["names"]
        p = PRESETS.get(preset_name)
        if p is not None and p.contain_dontcare and len(names) == p.label_nc:
            names = names + ["don't care"]
    names = names[:num_classes]
    return names + [f"class {i}" for i in range(len(names), num_classes)]


def example_labels(preset_name, gen, n=EXAMPLES):
    """`n` example label maps (int32 [H, W]) for the page: samples of the procedural
    datasets, else simple landscapes from the preset's class names."""
    from clade_tf.data import scenes, synthetic

    h, w, c = gen["image_height"], gen["image_width"], gen["num_classes"]
    if preset_name == "synthetic" and c <= synthetic.MAX_CLASSES:
        return [synthetic.make_sample(1, i, c, h, w)["label"] for i in range(n)]
    if preset_name == "synthetic-scenes" and c == scenes.NUM_CLASSES and min(h, w) >= scenes.MIN_SIZE:
        return [scenes.make_sample(1, i, h, w)["label"] for i in range(n)]
    names = class_names(preset_name, c)

    def pick(*candidates):
        return next((names.index(x) for x in candidates if x in names), None)

    ids = [pick(*x) for x in (("sky", "sky-other"), ("mountain", "hill"), ("tree", "vegetation"),
                              ("grass", "terrain", "field"), ("sea", "water", "river"), ("road",),
                              ("building", "house"))]
    fallback = list(range(min(c, 6)))
    ids = [fallback[i % len(fallback)] if v is None else v for i, v in enumerate(ids)]
    sky, mountain, tree, grass, sea, road, building = ids
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w], dtype=np.float64).reshape(2, 1, 1)
    out = []
    ridge = 0.45 + 0.08 * np.sin(x * 9.0)
    a = np.where(y < ridge, sky, grass)
    a[(y >= ridge) & (y < ridge + 0.12)] = mountain
    a[(np.abs(x - 0.25) < 0.06) & (y > 0.45) & (y < 0.8)] = tree
    out.append(a)
    b = np.where(y < 0.5, sky, sea)
    b[(y < 0.5) & (y > 0.35 + 0.1 * np.cos(x * 6.0))] = mountain
    out.append(b)
    d = np.where(y < 0.4, sky, road)
    d[(y >= 0.15) & (y < 0.6) & (x < 0.35)] = building
    d[(y >= 0.6) & (x > 0.7)] = grass
    out.append(d)
    return [e.astype(np.int32) for e in out[:n]]


def site_config(report, preset_name, runtime, model_file):
    gen = report["generator"]
    c = gen["num_classes"]
    from clade_tf.presets import PRESETS

    p = PRESETS.get(preset_name)
    # recorded by the export; an export written before it was recorded: the preset's
    dontcare = p.data_config().dontcare_class if p is not None and p.num_classes == c else None
    dontcare = report["contract"].get("dontcare_class", dontcare)
    colours = viz.palette(preset_name or "custom", c)
    return {
        "preset": preset_name, "height": gen["image_height"], "width": gen["image_width"],
        "num_classes": c, "inputs": report["contract"]["inputs"], "z_dim": gen.get("z_dim", 256),
        "norm_mode": gen.get("norm_mode"),
        # the don't-care class: the eraser paints it, and ICPE leaves it at zero offset as training does
        # (clade_tf.data.folders); None where the dataset has none
        "dontcare": dontcare,
        "classes": [{"name": n, "colour": [int(v) for v in col]}
                    for n, col in zip(class_names(preset_name, c), colours)],
        "runtime": runtime, "model": f"model/{model_file}",
        "examples": [f"examples/example{i + 1}.png" for i in range(EXAMPLES)],
    }


def build_site(export_dir, out, preset=None, runtime=None, model=None, force=False):
    """Writes the demo site for `export_dir` to `out` (atomically); returns its `demo.json` dict."""
    from clade_tf.presets import PRESETS

    report = read_export(export_dir)
    runtime, model_file = choose_model(export_dir, runtime, model)
    if preset is not None and preset not in PRESETS:
        raise WebError(f"--preset {preset}: expected one of {', '.join(sorted(PRESETS))}")
    gen = report["generator"]
    preset = preset or guess_preset(gen)
    if preset and PRESETS[preset].num_classes != gen["num_classes"] and preset != "custom":
        raise WebError(f"--preset {preset} has {PRESETS[preset].num_classes} classes; the model in "
                       f"{export_dir} has {gen['num_classes']}")
    modules = node_modules()
    missing = [src for src in RUNTIMES[runtime][1] if not os.path.isfile(os.path.join(modules, src))]
    if missing:
        raise WebError(f"{os.path.join(modules, missing[0])} not found: the browser runtimes are installed "
                       "by `npm ci` in the checkout (package.json), or set $CLADE_TF_NODE_MODULES to a "
                       "node_modules folder that has them")
    config = site_config(report, preset, runtime, model_file)
    examples = example_labels(preset, gen)
    try:
        with replace_directory(out, "web demo", force, inputs=(export_dir,)) as tmp:
            for name in PAGE_FILES:
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(SITE_SOURCE.joinpath(name).read_bytes())
            for src, dst in RUNTIMES[runtime][1].items():
                os.makedirs(os.path.dirname(os.path.join(tmp, dst)), exist_ok=True)
                shutil.copyfile(os.path.join(modules, src), os.path.join(tmp, dst))
            os.makedirs(os.path.join(tmp, "model"))
            shutil.copyfile(os.path.join(export_dir, model_file), os.path.join(tmp, "model", model_file))
            os.makedirs(os.path.join(tmp, "examples"))
            for path, lab in zip(config["examples"], examples):
                viz.save_png(os.path.join(tmp, path), lab.astype(np.uint8))  # class ids, as export.infer reads
            with open(os.path.join(tmp, "demo.json"), "w") as f:
                json.dump(config, f, indent=1)
    except OutputError as e:
        raise WebError(str(e)) from None
    return config


class _Handler(http.server.SimpleHTTPRequestHandler):
    # cross-origin isolation: SharedArrayBuffer, so both runtimes can run multi-threaded WebAssembly
    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args):
        pass


_Handler.extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                           ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


def serve(site, port=8000, host="127.0.0.1", background=False):
    """Serves `site` on http://host:port/ (port 0: a free one). Returns the server, started on a
    daemon thread when `background`, else the caller runs `serve_forever()`."""
    if not os.path.isfile(os.path.join(site, "index.html")):
        raise WebError(f"{site}: no index.html; build the site with python -m export.web first")
    try:
        server = http.server.ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=site))
    except OSError as e:
        raise WebError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror})") from None
    server.daemon_threads = True
    if background:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
