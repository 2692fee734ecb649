"""Export a generator to SavedModel, TFLite (fp32 / fp16 / int8) and ONNX, verified.

Every format has the same contract: inputs `label` int32 [N,H,W] and, where the
configuration uses them, `instance` int32 [N,H,W], `dist` float32 [N,H,W,2],
`z` float32 [N,256]; one output `image` float32 [N,H,W,3] in [-1, 1].
The exported graph is the folded inference graph (`clade_tf.inference`).
"""

import glob
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from clade_tf.config import GeneratorConfig
from clade_tf.inference import fold_for_inference
from clade_tf.networks.generator import Generator

FORMATS = {
    "saved_model": "saved_model",
    "tflite": "model_fp32.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8-dynamic": "model_int8_dynamic.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
FP32_FORMATS = ("saved_model", "tflite", "onnx")
FP32_TOLERANCE = 1e-4


class ExportError(Exception):
    """An export that cannot be produced or does not verify."""


def load_run(run_dir):
    """(GeneratorConfig, built Generator with the run's newest weights, record)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"{run_dir}: no config.json (is it a run directory of python -m train?)")
    with open(path) as f:
        record = json.load(f)
    cfg = GeneratorConfig.from_dict(record["generator"])
    g = Generator(cfg, name="generator")
    g.build()
    ckpts = sorted(glob.glob(os.path.join(run_dir, "ckpt-*", "generator.weights.h5")),
                   key=lambda p: int(os.path.basename(os.path.dirname(p))[5:]))
    candidates = ckpts[-1:] + [os.path.join(run_dir, "generator.weights.h5")]
    weights = next((p for p in candidates if os.path.isfile(p)), None)
    if weights is None:
        raise ExportError(f"{run_dir}: no generator weights (ckpt-*/generator.weights.h5 or generator.weights.h5)")
    g.load_weights(weights)
    return cfg, g, record


def serving_function(generator, batch):
    spec = generator.input_signature(batch)
    names = list(spec)

    def serve(*args):
        inputs = dict(zip(names, args))
        return {"image": generator(inputs, training=False)}

    fn = tf.function(serve, input_signature=[spec[n] for n in names])
    return fn, names


def example_inputs(cfg, batch, seed=0, n_batches=1):
    """Blocky random label/instance maps (+ ICPE maps, z) for verification and calibration."""
    from clade_tf.data.icpe import icpe_distance_map

    rng = np.random.default_rng(seed)
    out = []
    h, w = cfg.image_height, cfg.image_width
    for _ in range(n_batches):
        lab = rng.integers(0, cfg.num_classes, (batch, max(h // 8, 1), max(w // 8, 1)))
        lab = np.kron(lab, np.ones((1, 8, 8), np.int64))[:, :h, :w].astype(np.int32)
        d = {"label": lab}
        if cfg.use_instance:
            inst = rng.integers(0, 4, (batch, max(h // 16, 1), max(w // 16, 1)))
            d["instance"] = np.kron(inst, np.ones((1, 16, 16), np.int64))[:, :h, :w].astype(np.int32)
        if cfg.norm_mode == "clade-icpe":
            d["dist"] = np.stack([icpe_distance_map(x) for x in lab]).astype(np.float32)
        if cfg.use_vae:
            d["z"] = rng.standard_normal((batch, cfg.z_dim)).astype(np.float32)
        out.append(d)
    return out


def _tflite_converter(fn, names, kind, calibration):
    cf = fn.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    if kind == "tflite-fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-int8-dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "tflite-int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            for d in calibration:
                for i in range(len(d["label"])):
                    yield [d[n][i:i + 1] for n in names]

        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return conv.convert()
    except Exception as e:  # the converter raises several types
        msg = str(e).strip().splitlines()
        raise ExportError(f"{kind}: TFLite conversion with builtin ops failed: {msg[-1] if msg else e}") from None


def run_tflite(path, inputs):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    details = it.get_input_details()
    batch = len(inputs["label"])
    outs = []
    for i in range(batch):
        for d in details:
            name = next(n for n in inputs if d["name"].endswith(f"_{n}:0") or d["name"] == n)
            it.set_tensor(d["index"], inputs[name][i:i + 1].astype(d["dtype"]))
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    return np.concatenate(outs)


def run_onnx(path, inputs):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batch = len(inputs["label"])
    outs = []
    for i in range(batch):
        feed = {x.name: inputs[x.name][i:i + 1] for x in sess.get_inputs()}
        outs.append(sess.run(["image"], feed)[0])
    return np.concatenate(outs)


def run_saved_model(path, inputs):
    m = tf.saved_model.load(path)
    f = m.signatures["serving_default"]
    batch = len(inputs["label"])
    outs = []
    for i in range(batch):
        outs.append(f(**{k: tf.constant(v[i:i + 1]) for k, v in inputs.items()})["image"].numpy())
    return np.concatenate(outs)


def compare(out, ref):
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
    mse = float(np.mean((out - ref) ** 2))
    psnr = float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")  # peak-to-peak 2
    return err, psnr


def export(generator, out_dir, formats, batch=1, calibration=None, force=False):
    """Writes the formats into `out_dir` (atomically) and returns the report dict."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format(s) {unknown}; expected some of {', '.join(FORMATS)}")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(f"--out {out_dir} exists and is not empty (use --force to replace it)")
    cfg = generator.config
    folded = fold_for_inference(generator)
    fn, names = serving_function(folded, batch)
    check = example_inputs(cfg, batch, seed=1, n_batches=2)
    check = {k: np.concatenate([d[k] for d in check]) for k in check[0]}
    reference = generator({k: tf.constant(v) for k, v in check.items()}, training=False).numpy()
    calibration = calibration or example_inputs(cfg, 1, seed=2, n_batches=8)

    tmp = f"{out_dir.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    report = {"contract": {"inputs": names, "output": "image", "batch": batch,
                           "height": cfg.image_height, "width": cfg.image_width},
              "generator": cfg.to_dict(), "formats": {}}
    try:
        for kind in formats:
            name = FORMATS[kind]
            path = os.path.join(tmp, name)
            if kind == "saved_model":
                module = tf.Module()
                # track the underlying tf.Variables so the SavedModel owns them
                module.vars = [v.value if hasattr(v, "value") else v for v in folded.weights]
                module.serve = fn
                tf.saved_model.save(module, path, signatures={"serving_default": fn})
                out = run_saved_model(path, check)
            elif kind == "onnx":
                import tf2onnx

                model, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17)
                with open(path, "wb") as f:
                    f.write(model.SerializeToString())
                out = run_onnx(path, check)
            else:
                with open(path, "wb") as f:
                    f.write(_tflite_converter(fn, names, kind, calibration))
                out = run_tflite(path, check)
            err, psnr = compare(out, reference)
            ok = err <= FP32_TOLERANCE if kind in FP32_FORMATS else bool(np.isfinite(err))
            report["formats"][name] = {"rel_l2": err, "psnr_db": psnr, "ok": ok}
            if not ok:
                raise ExportError(f"{name}: relative L2 error {err:.2e} vs the Keras model exceeds "
                                  f"{FP32_TOLERANCE:g}")
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report

