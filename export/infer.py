"""Run an exported generator on label PNGs.

    python -m export.infer --model exports/run/model_fp32.tflite --labels label.png --out image.png
    python -m export.infer --model exports/run/model.onnx --labels labels/ --instances insts/ --out images/
    python -m export.infer --model exports/run --labels label.png --out image.png

`--model` is an export directory of `python -m export` (its fp32 model is used:
model_fp32.tflite, else model.onnx, else saved_model/), or one SavedModel directory,
`.tflite` or `.onnx` file of it (the `report.json` of the export gives the size and
class count). Label PNGs hold class ids (single channel); CLADE-ICPE maps are computed
from them; VAE models get a random z (`--seed`). The model is loaded once for a folder.
"""

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class InferError(Exception):
    pass


FP32_PREFERENCE = ("model_fp32.tflite", "model.onnx", "saved_model")


def resolve_model(model):
    """`(model file or SavedModel dir, the export's report)` for `--model`."""
    model = model.rstrip("/") or "/"
    if not os.path.exists(model):
        raise InferError(f"--model {model} not found")
    export_dir = os.path.dirname(os.path.abspath(model))
    if os.path.isdir(model) and os.path.isfile(os.path.join(model, "report.json")):
        export_dir = model  # an export directory: pick its fp32 model
        found = [n for n in FP32_PREFERENCE if os.path.exists(os.path.join(model, n))]
        if not found:
            raise InferError(f"--model {model}: the export holds no fp32 model ({', '.join(FP32_PREFERENCE)}); "
                             "name one of its model files")
        model = os.path.join(model, found[0])
    path = os.path.join(export_dir, "report.json")
    if not os.path.isfile(path):
        raise InferError(f"{path} not found: --model must be an export directory written by python -m export, "
                         "or a model file in one")
    try:
        with open(path) as f:
            return model, json.load(f)
    except json.JSONDecodeError as e:
        raise InferError(f"{path}: not valid JSON ({e})") from None


def read_label(path, num_classes, height, width, what="label map"):
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise InferError(f"{path}: unreadable {what} ({e})") from None
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise InferError(f"{path}: {what} must be a single-channel PNG of class ids, got shape {arr.shape}")
    if arr.shape != (height, width):
        raise InferError(f"{path}: {what} is {arr.shape[1]}x{arr.shape[0]}, the model expects {width}x{height}")
    arr = arr.astype(np.int64)
    if num_classes is not None and (arr.min() < 0 or arr.max() >= num_classes):
        bad = int(arr[(arr < 0) | (arr >= num_classes)][0])
        raise InferError(f"{path}: class {bad} is not known to the model (classes 0..{num_classes - 1})")
    return arr.astype(np.int32)


def list_pngs(path):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(".png"))
        if not files:
            raise InferError(f"{path}: no .png files")
        return files
    if not os.path.isfile(path):
        raise InferError(f"{path} not found")
    return [path]


def check_out(out, many):
    """Before the model is loaded: `--out` must be a writable folder (several inputs) or
    a PNG path in a writable folder (one input)."""
    from clade_tf.outdir import OutputError, check_writable

    try:
        if many:
            check_writable(out)
            return
        if os.path.isdir(out):
            raise InferError(f"--out {out} is a folder; one label map gives one PNG: name a file")
        check_writable(os.path.dirname(os.path.abspath(out)), flag=f"--out {out}: the folder")
    except OutputError as e:
        raise InferError(str(e)) from None


def run(args):
    from clade_tf import viz
    from clade_tf.data.icpe import icpe_distance_map
    from clade_tf.export.runtime import load_runner

    model, report = resolve_model(args.model)
    gen = report["generator"]
    h, w = gen["image_height"], gen["image_width"]
    labels = list_pngs(args.labels)
    insts = None
    if "instance" in report["contract"]["inputs"]:
        if not args.instances:
            raise InferError("this model uses instance edges: pass --instances (PNG or folder)")
        insts = list_pngs(args.instances)
        if len(insts) != len(labels):
            raise InferError(f"{len(labels)} label maps but {len(insts)} instance maps")
    many = len(labels) > 1 or os.path.isdir(args.labels)
    check_out(args.out, many)
    if many:
        os.makedirs(args.out, exist_ok=True)
    try:
        runner = load_runner(model)
    except ValueError as e:
        raise InferError(str(e)) from None
    print(f"model: {model}")
    rng = np.random.default_rng(args.seed)
    for i, lp in enumerate(labels):
        lab = read_label(lp, gen["num_classes"], h, w)
        x = {"label": lab[None]}
        if insts is not None:
            x["instance"] = read_label(insts[i], None, h, w, "instance map")[None]
        if "dist" in report["contract"]["inputs"]:
            # as training computed it: the don't-care class has no position
            x["dist"] = icpe_distance_map(lab, report["contract"].get("dontcare_class"))[None]
        if "z" in report["contract"]["inputs"]:
            x["z"] = rng.standard_normal((1, gen["z_dim"])).astype(np.float32)
        x = {k: x[k] for k in report["contract"]["inputs"]}
        img = runner(x)[0]
        dst = os.path.join(args.out, os.path.basename(lp)) if many else args.out
        viz.save_png(dst, viz.to_uint8(img))
        print(f"{lp} -> {dst}")


def main(argv=None):
    from clade_tf.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m export.infer", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="export directory of python -m export (its fp32 model), or a SavedModel dir / .tflite / "
                        ".onnx in one")
    p.add_argument("--labels", required=True, help="label PNG or folder of them")
    p.add_argument("--instances", help="instance-id PNG or folder (models with instance edges)")
    p.add_argument("--out", required=True, help="output PNG (one input) or folder")
    p.add_argument("--seed", type=int, default=0, help="seed of z for VAE models")
    args = p.parse_args(argv)
    try:
        run(args)
    except InferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while writing
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
