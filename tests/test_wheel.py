"""The installed package is the checkout's: a wheel built from pyproject.toml, installed with
pip into a fresh virtual environment outside the checkout, runs export -> web demo -> inference
with the real class names, palette, page files and example label maps (package data read with
importlib.resources), and holds the library only (the applications run from the checkout).

Nothing is downloaded: the wheel is built with the project environment's setuptools
(`--no-build-isolation`), and the fresh environment sees the project environment's installed
dependencies through a `.pth` file (`pip install --no-deps --no-index`)."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image

import clade_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "clade_tf")

# Run by the fresh environment's Python from a folder outside the checkout: the library API
# (the applications are not in the wheel) on a tiny ADE20K-shaped generator (151 classes at the
# preset's 256x256, ngf 4), so the class names and palette come from the shipped JSON files.
SCRIPT = textwrap.dedent('''
    import importlib.util, json, os, sys
    import keras
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    venv, out = sys.argv[1], sys.argv[2]
    import clade_tf
    from clade_tf import Generator, resources
    from clade_tf.export import example_inputs, export, load_runner, web
    from clade_tf.metrics import scenes as ms
    from clade_tf.presets import PRESETS

    result = {"clade_tf": clade_tf.__file__, "resources": resources.__file__,
              "applications": [n for n in ("train", "export", "evaluate", "benchmarks")
                               if importlib.util.find_spec(n) is not None]}
    # the browser runtimes come from npm, not from the wheel: stand-ins of the files the site copies
    modules = os.path.abspath("node_modules")
    for src in web.RUNTIMES["litert"][1]:
        os.makedirs(os.path.dirname(os.path.join(modules, src)), exist_ok=True)
        with open(os.path.join(modules, src), "w") as f:
            f.write("runtime stand-in")
    os.environ["CLADE_TF_NODE_MODULES"] = modules

    # random weights at the scale of a trained model's: at the default 0.02-gain initialisation
    # the image is ~1e-4 and fp32 rounding alone fails the export's relative-error check
    keras.utils.set_random_seed(0)
    cfg = PRESETS["ade20k"].generator_config("clade", ngf=4)
    g = Generator(cfg)
    g.build()
    rng = np.random.default_rng(0)
    for v in g.trainable_weights:
        if len(v.shape) == 4:
            fan_in, fan_out = int(np.prod(v.shape[:3])), int(v.shape[3] * np.prod(v.shape[:2]))
            v.assign(rng.standard_normal(v.shape).astype(np.float32) * np.sqrt(2.0 / (fan_in + fan_out)))
    x = {k: tf.constant(v) for k, v in example_inputs(cfg, 2, seed=1)[0].items()}
    scale = 0.5 / float(np.std(g.features(x, training=False).numpy()))
    g.conv_img.kernel.assign(g.conv_img.kernel * scale)
    g.conv_img.bias.assign(g.conv_img.bias * scale)
    report = export(g, "exp", ["tflite-fp32"])
    result["export_ok"] = report["formats"]["model_fp32.tflite"]["ok"]
    result["demo"] = web.build_site("exp", "site", preset="ade20k")

    runner = load_runner(os.path.join("exp", "model_fp32.tflite"))
    result["example"] = resources.example_label("ade20k", 1)
    label = np.asarray(Image.open(result["example"])).astype(np.int32)
    image = np.asarray(runner({"label": label[None]})[0])
    result["image"] = {"shape": list(image.shape), "finite": bool(np.isfinite(image).all()),
                       "std": float(image.std()),
                       "saturated": float(np.mean(np.abs(image) > 0.98))}
    result["segmenter"] = resources.segmenter_weights()
    result["segmenter_layers"] = len(ms.load_segmenter().get_weights())
    with open(out, "w") as f:
        json.dump(result, f)
''')


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(cmd, cwd, env, timeout):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def install_and_run(tmp):
    """Builds the wheel, installs it in a fresh venv and runs SCRIPT there: `(wheel, venv, work
    dir, SCRIPT's result dict)`."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail(f"setuptools is not installed in {sys.prefix}: the wheel is built without network "
                    "(pip install setuptools)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # built from a copy: setuptools writes build/ and *.egg-info next to pyproject.toml
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(os.path.join(ROOT, name), src / name)
    shutil.copytree(PACKAGE, src / "clade_tf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         str(src), "-w", str(tmp / "dist")], tmp, env, 300)
    wheels = sorted((tmp / "dist").glob("clade_tf-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env, 120)
    python = str(venv / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               tmp, env, 60).stdout.strip()
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    with open(os.path.join(site, "project-dependencies.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    # pip itself is one of the dependencies the .pth exposes; it installs into the fresh venv
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])], tmp, env, 300)

    work = tmp / "work"
    work.mkdir()
    assert not inside(work, ROOT)
    (work / "script.py").write_text(SCRIPT)
    run([python, "script.py", str(venv), "result.json"], work, env, 600)
    with open(work / "result.json") as f:
        return wheels[0], venv, work, json.load(f)


def inside(path, folder):
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def check_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    # the library only, at the version it reports (pyproject.toml and clade_tf.__version__ agree)
    assert {n.split("/")[0] for n in names} == {"clade_tf", f"clade_tf-{clade_tf.__version__}.dist-info"}
    # every data file of the package in the checkout is in the wheel
    data = []
    for base, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        data += [os.path.relpath(os.path.join(base, f), ROOT).replace(os.sep, "/")
                 for f in files if not f.endswith((".py", ".pyc"))]
    assert any(n.startswith("clade_tf/resources/examples/") for n in data)
    assert sorted(set(data) - set(names)) == []


# One test, not several on one fixture: under pytest-xdist each worker would build and install
# its own copy.
def test_installed_wheel_runs_export_web_infer_with_its_data(tmp_path):
    wheel, venv, work, r = install_and_run(tmp_path)
    check_wheel_contents(wheel)
    # the fresh environment's copy ran, not the checkout's, and the applications are not installed
    assert inside(r["clade_tf"], venv) and inside(r["resources"], venv), r["clade_tf"]
    assert r["applications"] == []
    assert r["export_ok"] is True
    demo = r["demo"]
    assert demo["preset"] == "ade20k" and demo["num_classes"] == 151
    names = [c["name"] for c in demo["classes"]]
    assert names[:3] == ["wall", "building", "sky"] and names[-1] == "don't care"
    assert not any(n.startswith("class ") for n in names)
    with open(os.path.join(PACKAGE, "resources", "palettes", "ade20k.json")) as f:
        assert [c["colour"] for c in demo["classes"]] == json.load(f)["colours"][:151]
    site = work / "site"
    for name in os.listdir(os.path.join(PACKAGE, "export", "web_site")):
        assert sha256(site / name) == sha256(os.path.join(PACKAGE, "export", "web_site", name)), name
    # the page's examples at the preset's size are the shipped ones, read from the installed package
    assert inside(r["example"], venv)
    shipped = np.asarray(Image.open(os.path.join(PACKAGE, "resources", "examples", "ade20k", "example1.png")))
    assert (np.asarray(Image.open(site / demo["examples"][0])) == shipped).all()
    assert (np.asarray(Image.open(r["example"])) == shipped).all()
    assert r["image"]["shape"] == [256, 256, 3] and r["image"]["finite"]
    assert r["image"]["std"] > 0.05 and r["image"]["saturated"] < 0.05  # an image, not a flat or clipped one
    assert inside(r["segmenter"], venv)
    assert sha256(r["segmenter"]) == sha256(os.path.join(PACKAGE, "resources", "segmenters",
                                                         "synthetic-scenes-64.weights.h5"))
    assert r["segmenter_layers"] > 0
