"""Export a generator to SavedModel, TFLite (fp32 / fp16 / int8) and ONNX, verified.

Every format has the same contract: inputs `label` int32 [N,H,W] and, where the
configuration uses them, `instance` int32 [N,H,W], `dist` float32 [N,H,W,2],
`z` float32 [N,256]; one output `image` float32 [N,H,W,3] in [-1, 1].
The exported graph is the folded inference graph (`clade_tf.inference`).

Verification (`report.json`), on the given inputs (the CLI: samples of the training
data after the calibration samples) or blocky random label maps: fp32 formats are
compared with the Keras model and must be within `FP32_TOLERANCE` relative L2, or
the export fails; fp16 / int8 formats
are compared with the fp32 TFLite model's output (converted for the comparison even
when `tflite-fp32` is not requested), so their error is the quantization error alone,
and each has its own limit (`QUANTIZED_TOLERANCE`). Every entry records `limit` and
`ok` (`rel_l2 <= limit`); a quantized format over its limit is still written, with
`ok: false`. Every entry also records `saturated_fraction`, the share of reference
pixels with |y| > 0.99: where tanh saturates, small pre-tanh differences vanish, so a
large fraction makes the comparison less meaningful.
"""

import os

import numpy as np
import tensorflow as tf

from clade_tf.data import sources
from clade_tf.data.icpe import icpe_distance_map
from clade_tf.export.converters import ExportError, serving_function, write_format
from clade_tf.export.delegates import check as check_delegates
from clade_tf.export.exportdir import write_report
from clade_tf.export.int8 import explain_int8
from clade_tf.export.runtime import FORMATS, FP32_FORMATS, check_formats, load_runner
from clade_tf.gan import non_finite_weights
from clade_tf.inference import DEFAULT_GRAPH, fold_for_inference
from clade_tf.outdir import check_output, replace_directory

FP32_TOLERANCE = 1e-4  # relative L2 vs Keras; measured 1e-7 (default run) to 2e-6 (test models)
# Relative L2 vs the fp32 TFLite model. Measured on the default run (BENCHMARKS.md, synthetic
# 64x64 trained 800 steps): fp16 1.7e-4, dynamic int8 1.1e-2 (1.4e-2, 9.6e-3 in earlier
# runs), full int8 2.4e-2 (7.5e-2 before `clade_tf.inference` folded norm_1 into its conv
# and looked the one-hot up); on the tests' unsaturated random-weight generators
# (tests/test_export.py, 4 configurations x 2-4 seeds): fp16 <= 5.2e-4, dynamic int8
# <= 1.7e-2, full int8 <= 0.19. Each limit is several times the largest of these and
# far below the 1.0 of an all-zero (or uncorrelated) output.
QUANTIZED_TOLERANCE = {"tflite-fp16": 1e-2, "tflite-int8-dynamic": 0.1, "tflite-int8": 0.3}
SATURATION = 0.99  # |image| above this counts as a saturated (tanh) output pixel
CALIBRATION_SAMPLES = 32
VERIFY_SAMPLES = 8  # of the training data, after the calibration samples
REFERENCE_TFLITE = ".fp32_reference.tflite"  # scratch fp32 TFLite when `tflite-fp32` is not requested


def example_inputs(cfg, batch, seed=0, n_batches=1):
    """Blocky random label/instance maps (+ ICPE maps, z) for verification and calibration."""
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


def calibration_inputs(cfg, n=CALIBRATION_SAMPLES, data=None, seed=0, source_name="run data",
                       unavailable="no training data given"):
    """Int8 calibration inputs: `(list of input dicts, description, fallback reason or None)`.

    The first `n` samples of the training stream of `data` (a `DataConfig`, with the
    run's `seed`: the order and augmentation training sees) when it is given and
    readable, else `n` blocky random label maps with the reason.
    """
    reason = unavailable
    if data is not None:
        try:
            inputs = sources.first_samples(data, cfg, seed, n)
            return [inputs], f"{source_name} ({len(inputs['label'])} samples)", None
        except (ValueError, OSError) as e:  # no dataroot, missing folder, bad/absent samples
            reason = str(e)
    return example_inputs(cfg, 1, seed=2, n_batches=n), "random blocky labels", reason


def compare(out, ref):
    """`(relative L2 error, PSNR in dB for the [-1, 1] range)`."""
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
    mse = float(np.mean((out - ref) ** 2))
    psnr = float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")  # peak-to-peak 2
    return err, psnr


def report_entry(out, ref, reference):
    err, psnr = compare(out, ref)
    return {"rel_l2": err, "psnr_db": psnr, "reference": reference,
            "saturated_fraction": float(np.mean(np.abs(ref) > SATURATION))}


# The graph options of each format (`clade_tf.inference.GRAPH_OPTIONS`; the others get
# `DEFAULT_GRAPH`), measured on tiny CLADE / CLADE-ICPE / SPADE exports
# (tests/test_phone_graph.py):
# - lookups "flat-1d" in the float TFLite formats: the GPU delegate takes GATHER only with
#   1-D int32 indices (every N-D lookup fell back to the CPU). Not full-integer int8: its
#   int8 GATHER (version 2) is refused by the GPU delegate either way, XNNPACK takes no
#   GATHER, and flattening only adds a RESHAPE pair per lookup.
# - upsample "depth-to-space" in every TFLite format: XNNPACK has no
#   RESIZE_NEAREST_NEIGHBOR, so each resize split its partitions (bit-identical pixels).
# - ordered_lookups off everywhere: ordering each lookup after its layer's input saves the
#   CPU interpreter memory only (ADE20K fp32 964 -> 815 MB; 256x256, 150 classes, ngf 16
#   fp32 phone graph: 151 -> 114 MB after a run, at the same 1-thread latency within
#   noise), while it splits XNNPACK into a partition per layer (the GATHERs between them:
#   15 on the tiny CLADE against 1 without) and adds an int GREATER + CAST per layer to
#   the GPU delegate's graph. Full-integer int8 never had it (there the test runs on
#   quantized values and can come out true).
PHONE_FLOAT_GRAPH = {"lookups": "flat-1d", "upsample": "depth-to-space", "ordered_lookups": False}
PHONE_INT8_GRAPH = {"lookups": "nd", "upsample": "depth-to-space", "ordered_lookups": False}


def graph_options(kind):
    """The graph options format `kind` is traced with (see `PHONE_FLOAT_GRAPH`)."""
    if kind == "tflite-int8":
        return dict(PHONE_INT8_GRAPH)
    if kind.startswith("tflite"):
        return dict(PHONE_FLOAT_GRAPH)
    return dict(DEFAULT_GRAPH)


def conversion_order(formats):
    """The formats to convert, fp32 TFLite first: it is the fp16 / int8 formats' reference."""
    quantized = [k for k in formats if k not in FP32_FORMATS]
    work = [k for k in formats if k != "tflite-fp32"]
    if quantized or "tflite-fp32" in formats:
        work.insert(0, "tflite-fp32")
    return work


def tolerance(kind):
    """The largest relative L2 error `kind` may have against its reference."""
    return FP32_TOLERANCE if kind in FP32_FORMATS else QUANTIZED_TOLERANCE[kind]


def verify(kind, out, reference, tflite_reference, what):
    """The report entry of `kind`'s output `out`, `ok` when within `tolerance(kind)`.

    fp32 formats are compared with the Keras model and raise `ExportError` when not
    ok (a conversion error); fp16 / int8 ones with the fp32 TFLite output, and are
    only marked (quantization error depends on the weights)."""
    fp32 = kind in FP32_FORMATS
    entry = report_entry(out, reference if fp32 else tflite_reference, "keras" if fp32 else "tflite fp32")
    entry["limit"] = tolerance(kind)
    entry["ok"] = bool(entry["rel_l2"] <= entry["limit"])  # False for NaN too
    if fp32 and not entry["ok"]:
        raise ExportError(f"{what}: relative L2 error {entry['rel_l2']:.2e} vs the Keras model "
                          f"exceeds {FP32_TOLERANCE:g}")
    return entry


def check_inputs(cfg, data, seed, skip, n):
    """`n` samples of the run's training stream after its first `skip` (the calibration
    samples): inputs the int8 model was not calibrated on, as one dict of arrays."""
    inputs = sources.first_samples(data, cfg, seed, skip + n)
    if len(inputs["label"]) < skip + n:
        raise ValueError(f"the data has {len(inputs['label'])} samples, fewer than {skip + n}")
    return {k: v[skip:] for k, v in inputs.items()}


def export(generator, out_dir, formats, batch=1, calibration=None, force=False,
           calibration_source=None, inputs=(), dontcare_class=None, check=None, check_source=None,
           explain=False):
    """Writes the formats into `out_dir` (atomically) and returns the report dict.

    `force` replaces an earlier export only, never `inputs` (the run or weights file
    exported) or a folder holding them (`clade_tf.outdir`).

    `calibration`: int8 representative inputs (list of input dicts; default: 8 blocky
    random label maps) and `calibration_source` its description for the report.
    `check`: the verification inputs (a dict of arrays, a multiple of `batch` samples;
    default: 2 batches of blocky random label maps) and `check_source` its description.
    fp32 formats are verified against the Keras model, fp16 / int8 ones measured
    against the fp32 TFLite model and marked `ok: false` over their limit (see the
    module docstring). `explain`: also measure the int8 error of each layer group
    alone (`clade_tf.export.int8`) into the report's `int8_layers`.
    """
    check_formats(formats)
    if explain and "tflite-int8" not in formats:
        raise ExportError("explaining the int8 error needs the tflite-int8 format")
    if check is not None and len(check["label"]) % batch:
        raise ExportError(f"{len(check['label'])} verification samples: expected a multiple of the batch {batch}")
    check_output(out_dir, "export", force, inputs)  # before minutes of conversion
    bad = non_finite_weights(generator)
    if bad:
        raise ExportError(f"the generator's weights hold NaN/Inf ({len(bad)} variables, e.g. {bad[0]}): its "
                          "training diverged; export an earlier checkpoint")
    cfg = generator.config
    folded = fold_for_inference(generator)
    # one trace per set of graph options (`graph_options`)
    graphs = {k: graph_options(k) for k in conversion_order(formats)}
    fns = {}
    for graph in graphs.values():
        key = tuple(sorted(graph.items()))
        if key not in fns:
            fns[key] = serving_function(folded, batch, graph=graph)[0]
    names = list(generator.input_signature(batch))
    if check is None:
        check = example_inputs(cfg, batch, seed=1, n_batches=2)
        check = {k: np.concatenate([d[k] for d in check]) for k in check[0]}
        check_source = "random blocky labels"
    check = {k: np.asarray(check[k]) for k in names}
    reference = generator({k: tf.constant(v) for k, v in check.items()}, training=False).numpy()
    if calibration is None:
        calibration, calibration_source = example_inputs(cfg, 1, seed=2, n_batches=8), "random blocky labels"
    # dontcare_class (`DataConfig.dontcare_class`): the class a CLADE-ICPE caller leaves at
    # zero position (`icpe_distance_map(label, dontcare_class)`, as training did)
    report = {"contract": {"inputs": names, "output": "image", "batch": batch,
                           "height": cfg.image_height, "width": cfg.image_width,
                           "dontcare_class": dontcare_class},
              "generator": cfg.to_dict(), "formats": {},
              "verification": f"{check_source or 'given inputs'} ({len(check['label'])} samples)"}
    if "tflite-int8" in formats:
        report["calibration"] = calibration_source or "given inputs"
    with replace_directory(out_dir, "export", force, inputs) as tmp:
        entries, tflite_out = {}, None
        for kind in conversion_order(formats):
            name = FORMATS[kind] if kind in formats else REFERENCE_TFLITE
            path = os.path.join(tmp, name)
            fn = fns[tuple(sorted(graphs[kind].items()))]
            write_format(kind, path, fn, names, folded.weights, calibration)
            out = load_runner(path)(check)
            what = name if kind in formats else "fp32 TFLite reference of the fp16/int8 formats"
            entry = verify(kind, out, reference, tflite_out, what)
            if kind == "tflite-fp32":
                tflite_out = out
            if kind in formats:
                entry["graph"] = graphs[kind]  # how the file's graph was written
                entries[kind] = entry
            else:
                os.remove(path)
            if kind == "tflite-int8" and explain:
                report["int8_layers"] = explain_int8(folded, fn, names, calibration, check, tflite_out, compare)
        for kind in formats:  # which ops the phone delegates take (clade_tf.export.delegates)
            if kind.startswith("tflite"):
                entries[kind]["delegates"] = check_delegates(os.path.join(tmp, FORMATS[kind]))
        report["formats"] = {FORMATS[k]: entries[k] for k in formats}
        write_report(tmp, report)  # read back by clade_tf.export.ExportDir
    return report
