"""Export a generator to SavedModel, TFLite (fp32 / fp16 / int8) and ONNX, verified.

Every format has the same contract: inputs `label` int32 [N,H,W] and, where the
configuration uses them, `instance` int32 [N,H,W], `dist` float32 [N,H,W,2],
`z` float32 [N,256]; one output `image` float32 [N,H,W,3] in [-1, 1].
The exported graph is the folded inference graph (`clade_tf.inference`).

Verification (`report.json`): fp32 formats are compared with the Keras model and
must be within `FP32_TOLERANCE` relative L2; fp16 / int8 formats are compared with
the fp32 TFLite model's output (converted for the comparison even when `tflite` is
not requested), so their error is the quantization error alone. Every entry also
records `saturated_fraction`, the share of reference pixels with |y| > 0.99: where
tanh saturates, small pre-tanh differences vanish, so a large fraction makes the
comparison less meaningful.
"""

import contextlib
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
SATURATION = 0.99  # |image| above this counts as a saturated (tanh) output pixel
CALIBRATION_SAMPLES = 32
_REFERENCE_TFLITE = ".fp32_reference.tflite"  # scratch fp32 TFLite when `tflite` is not requested


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
    load_generator_weights(g, weights, f"the generator of {path}")
    return cfg, g, record


def load_generator_weights(generator, path, architecture):
    """Loads a Keras weights file into the built `generator`, with one-line errors.

    `architecture` describes what the weights should fit (for the message). Besides
    Keras' own checks (missing or differently shaped variables), a `.weights.h5`
    holding more arrays than the model has (e.g. BatchNorm statistics loaded into an
    `instance` param-free norm, which Keras skips silently) is a mismatch too.
    """
    if not os.path.isfile(path):
        raise ExportError(f"weights file not found: {path}")
    try:
        generator.load_weights(path)
    except (ValueError, OSError, KeyError) as e:
        text = str(e).strip()
        if isinstance(e, OSError) or "File format not supported" in text:
            raise ExportError(f"{path}: not a Keras weights file (.weights.h5): {text.splitlines()[0]}") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(e).__name__]
        example = next((ln for ln in lines[1:] if " expected " in ln), None)
        detail = f"{lines[0].split(' Example')[0].rstrip('.')}; e.g. {example}" if example else lines[0]
        raise ExportError(f"{path} does not match {architecture}: {detail}") from None
    import h5py

    if h5py.is_hdf5(path):
        arrays = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, v: arrays.append(1) if isinstance(v, h5py.Dataset) else None)
        if len(arrays) > len(generator.weights):
            raise ExportError(f"{path} does not match {architecture}: the file holds {len(arrays)} weight "
                              f"arrays, the model has {len(generator.weights)}")


def preset_config(preset_name, norm="clade", use_vae=False, param_free_norm="syncbatch", label_nc=None,
                  contain_dontcare=False, use_instance=False, dataroot=None):
    """(TrainConfig, Preset, GeneratorConfig) as `python -m train --dataset preset_name` builds them.

    The preset is resolved by `train.run.resolve_preset` (`custom` takes `label_nc`,
    `contain_dontcare`, `use_instance`), the generator configuration as `train.run.run`
    does; `dataroot` is where the preset's data is (for int8 calibration).
    """
    from train.config import TrainConfig
    from train.run import resolve_preset

    if preset_name == "custom" and label_nc is None:
        raise ExportError("--preset custom needs --label-nc N")
    if preset_name != "custom" and (label_nc is not None or contain_dontcare or use_instance):
        raise ExportError("--label-nc / --contain-dontcare / --use-instance apply to --preset custom only")
    train = TrainConfig(dataset=preset_name, dataroot=dataroot, norm=norm, use_vae=use_vae,
                        param_free_norm=param_free_norm, label_nc=label_nc,
                        contain_dontcare=contain_dontcare, use_instance=use_instance)
    preset = resolve_preset(train)
    cfg = preset.generator_config(train.norm, use_vae=train.use_vae, param_free_norm=train.param_free_norm)
    return train, preset, cfg


def load_weights(path, preset_name, norm="clade", use_vae=False, param_free_norm="syncbatch", **custom):
    """(GeneratorConfig, built Generator with the weights file, TrainConfig, Preset) for `--weights`."""
    train, preset, cfg = preset_config(preset_name, norm, use_vae, param_free_norm, **custom)
    if not os.path.isfile(path):
        raise ExportError(f"weights file not found: {path}")
    g = Generator(cfg, name="generator")
    g.build()
    arch = f"preset {preset_name} / norm {norm} (param-free norm {param_free_norm}{', VAE' if use_vae else ''})"
    load_generator_weights(g, path, arch)
    return cfg, g, train, preset


def run_training_config(record, dataroot=None):
    """(TrainConfig, Preset) of a run's `config.json` record, or None when it has no `train`
    section (an imported checkpoint). `dataroot` overrides the recorded data folder."""
    import dataclasses

    from clade_tf.presets import Preset
    from train.config import TrainConfig
    from train.run import resolve_preset

    if not isinstance(record.get("train"), dict):
        return None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    train = TrainConfig(**{k: v for k, v in record["train"].items() if k in names})
    if dataroot:
        train = dataclasses.replace(train, dataroot=dataroot)
    try:
        preset = Preset(**record["preset"])  # exactly the preset the run trained with
    except (KeyError, TypeError):
        preset = resolve_preset(train)
    return train, preset


class CalibrationUnavailable(Exception):
    """The training data cannot be read for calibration (the message says why)."""


def data_calibration(train, preset, cfg, n):
    """Up to `n` training samples as int8 calibration inputs (one dict of [n, ...] arrays).

    The data source is `train.run.make_source` with the run's settings, and the
    samples are the first `n` of the training stream's first epoch (same order and
    augmentation as `clade_tf.data.pipeline.make_dataset` with the run's seed).
    `z` (VAE) is drawn from the prior, as at inference. Raises `CalibrationUnavailable`.
    """
    from clade_tf.data import pipeline
    from train.run import UsageError, make_source

    try:
        source = make_source(train, preset, cfg, phase="train")
    except (UsageError, OSError, ValueError) as e:  # no dataroot, missing folder, bad/absent samples
        raise CalibrationUnavailable(str(e)) from None
    order = pipeline.epoch_order(len(source), train.seed, 0)
    samples, bad = [], []
    for index in order:
        if len(samples) == n:
            break
        try:
            samples.append(source.load(int(index), pipeline.sample_rng(train.seed, 0, int(index))))
        except (ValueError, OSError) as e:  # folders.BadSample is a ValueError
            bad.append(str(e))
            if len(bad) > n:
                raise CalibrationUnavailable(f"too many bad samples ({bad[0]})") from None
    if not samples:
        raise CalibrationUnavailable("the dataset has no usable samples")
    keys = ["label"] + (["instance"] if cfg.use_instance else []) + (
        ["dist"] if cfg.norm_mode == "clade-icpe" else [])
    missing = [k for k in keys if k not in samples[0]]
    if missing:
        raise CalibrationUnavailable(f"the data has no {'/'.join(missing)} maps, the generator needs them")
    out = {k: np.stack([s[k] for s in samples]).astype(np.float32 if k == "dist" else np.int32) for k in keys}
    size = (cfg.image_height, cfg.image_width)
    if out["label"].shape[1:] != size:
        raise CalibrationUnavailable(f"the data is {out['label'].shape[1]}x{out['label'].shape[2]}, "
                                     f"the generator {size[0]}x{size[1]}")
    outside = out["label"][(out["label"] < 0) | (out["label"] >= cfg.num_classes)]
    if outside.size:
        raise CalibrationUnavailable(f"the data has class {int(outside[0])}, the generator "
                                     f"{cfg.num_classes} classes")
    if cfg.use_vae:
        out["z"] = np.random.default_rng([train.seed, 2]).standard_normal(
            (len(samples), cfg.z_dim)).astype(np.float32)
    return out


def calibration_inputs(cfg, n=CALIBRATION_SAMPLES, train=None, preset=None, source_name="run data",
                       unavailable="no training data given"):
    """Int8 calibration inputs: (list of input dicts, description, fallback reason or None).

    From the training data (`data_calibration`) when `train` is given and readable,
    else `n` blocky random label maps (`example_inputs`) with the reason.
    """
    reason = unavailable
    if train is not None:
        try:
            data = data_calibration(train, preset, cfg, n)
            return [data], f"{source_name} ({len(data['label'])} samples)", None
        except CalibrationUnavailable as e:
            reason = str(e)
    return example_inputs(cfg, 1, seed=2, n_batches=n), "random blocky labels", reason


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


def _update_node_proto(self, external_tensor_storage=None):
    """`tf2onnx.graph.Node.update_proto` writing a fresh NodeProto instead of clearing and
    refilling the old one: with the upb protobuf backend, cleared repeated fields stay in
    the message's arena, so every optimizer pass kept one more copy of every weight."""
    import onnx

    old = self._op
    op = onnx.NodeProto(name=old.name, op_type=old.op_type, domain=old.domain, doc_string=old.doc_string)
    op.input.extend(self.input)
    op.output.extend(self.output)
    for attr_name, sub_graph in (self.get_body_graphs() or {}).items():
        self.set_attr(attr_name, sub_graph.make_graph(f"graph for {self.name} {attr_name}",
                                                      external_tensor_storage=external_tensor_storage))
    op.attribute.extend(self.get_onnx_attrs(external_tensor_storage).values())
    self._op = op


@contextlib.contextmanager
def lean_tf2onnx():
    """Bounds tf2onnx 1.17's memory to a few copies of the weights (full-size SPADE went
    past 21 GB, CLADE reached 12.4 GB; with this CLADE peaks at 6.8 GB, in TF's freezing):

    - `Node.update_proto` rebuilds the node proto (see `_update_node_proto`);
    - `TF2ONNX_CATCH_ERRORS` is set, so the optimizers run without a deep copy of the
      whole graph before each pass (the copies piled up as cyclic garbage). A failing
      optimizer then fails the export instead of being skipped; tf2onnx compares the
      variable's name, not its value, so any value turns the catching off.
    """
    import tf2onnx.graph

    saved_update, saved_env = tf2onnx.graph.Node.update_proto, os.environ.get("TF2ONNX_CATCH_ERRORS")
    tf2onnx.graph.Node.update_proto = _update_node_proto
    os.environ["TF2ONNX_CATCH_ERRORS"] = "false"
    try:
        yield
    finally:
        tf2onnx.graph.Node.update_proto = saved_update
        if saved_env is None:
            os.environ.pop("TF2ONNX_CATCH_ERRORS", None)
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = saved_env


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


def write_format(kind, path, fn, names, weights=(), calibration=None):
    """Converts the serving function `fn` (from `serving_function`) to `kind` at `path`.
    `weights`: the model's variables (SavedModel); `calibration`: int8 inputs."""
    if kind == "saved_model":
        module = tf.Module()
        # track the underlying tf.Variables so the SavedModel owns them
        module.vars = [v.value if hasattr(v, "value") else v for v in weights]
        module.serve = fn
        tf.saved_model.save(module, path, signatures={"serving_default": fn})
    elif kind == "onnx":
        import tf2onnx

        with lean_tf2onnx():
            model, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17)
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
    else:
        with open(path, "wb") as f:
            f.write(_tflite_converter(fn, names, kind, calibration))


def run_format(kind, path, inputs):
    """Runs the `kind` file at `path` on a dict of batched inputs."""
    if kind == "saved_model":
        return run_saved_model(path, inputs)
    if kind == "onnx":
        return run_onnx(path, inputs)
    return run_tflite(path, inputs)


def compare(out, ref):
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
    mse = float(np.mean((out - ref) ** 2))
    psnr = float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")  # peak-to-peak 2
    return err, psnr


def check_formats(formats):
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format(s) {unknown}; expected some of {', '.join(FORMATS)}")


def _entry(out, ref, reference):
    err, psnr = compare(out, ref)
    return {"rel_l2": err, "psnr_db": psnr, "reference": reference,
            "saturated_fraction": float(np.mean(np.abs(ref) > SATURATION))}


def export(generator, out_dir, formats, batch=1, calibration=None, force=False,
           calibration_source=None):
    """Writes the formats into `out_dir` (atomically) and returns the report dict.

    `calibration`: int8 representative inputs (list of input dicts; default: 8 blocky
    random label maps) and `calibration_source` its description for the report.
    fp32 formats are verified against the Keras model, fp16 / int8 ones measured
    against the fp32 TFLite model (see the module docstring).
    """
    check_formats(formats)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(f"--out {out_dir} exists and is not empty (use --force to replace it)")
    cfg = generator.config
    folded = fold_for_inference(generator)
    fn, names = serving_function(folded, batch)
    check = example_inputs(cfg, batch, seed=1, n_batches=2)
    check = {k: np.concatenate([d[k] for d in check]) for k in check[0]}
    reference = generator({k: tf.constant(v) for k, v in check.items()}, training=False).numpy()
    if calibration is None:
        calibration, calibration_source = example_inputs(cfg, 1, seed=2, n_batches=8), "random blocky labels"

    tmp = f"{out_dir.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    report = {"contract": {"inputs": names, "output": "image", "batch": batch,
                           "height": cfg.image_height, "width": cfg.image_width},
              "generator": cfg.to_dict(), "formats": {}}
    if "tflite-int8" in formats:
        report["calibration"] = calibration_source or "given inputs"
    # fp32 TFLite first: it is the reference of the fp16 / int8 formats
    quantized = [k for k in formats if k not in FP32_FORMATS]
    work = [k for k in formats if k != "tflite"]
    if quantized or "tflite" in formats:
        work.insert(0, "tflite")
    entries, tflite_out = {}, None
    try:
        for kind in work:
            name = FORMATS[kind] if kind in formats else _REFERENCE_TFLITE
            path = os.path.join(tmp, name)
            write_format(kind, path, fn, names, folded.weights, calibration)
            out = run_format(kind, path, check)
            if kind in FP32_FORMATS:
                entry = _entry(out, reference, "keras")
                entry["ok"] = entry["rel_l2"] <= FP32_TOLERANCE
                if not entry["ok"]:
                    what = name if kind in formats else "fp32 TFLite reference of the fp16/int8 formats"
                    raise ExportError(f"{what}: relative L2 error {entry['rel_l2']:.2e} vs the Keras model "
                                      f"exceeds {FP32_TOLERANCE:g}")
            else:
                entry = _entry(out, tflite_out, "tflite fp32")
                entry["ok"] = bool(np.isfinite(entry["rel_l2"]))
            if kind == "tflite":
                tflite_out = out
            if kind in formats:
                entries[name] = entry
            else:
                os.remove(path)
        report["formats"] = {FORMATS[k]: entries[FORMATS[k]] for k in formats}
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
