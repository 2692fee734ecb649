"""Loaded runners for exported generators: `load_runner(path, threads)` -> a callable.

One piece of code runs every exported format (LiteRT for `.tflite`, onnxruntime for
`.onnx`, TensorFlow for a SavedModel directory), for the export's verification, the
inference CLI, evaluation and the benchmarks. The model is loaded once; each call
takes a dict of batched inputs (`label`, and as the model needs them `instance`,
`dist`, `z`) and returns the `image` batch as numpy, running the model's static batch
(1 by default) as many times as needed.

Imports numpy only (each runtime when a model needs it): a deployed model does not
carry TensorFlow, and `import clade_tf.export.runtime` does not load it.
"""

import os

import numpy as np

# Format name -> file name in an export directory; the one list of formats.
FORMATS = {
    "saved_model": "saved_model",
    "tflite-fp32": "model_fp32.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8-dynamic": "model_int8_dynamic.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
FP32_FORMATS = ("saved_model", "tflite-fp32", "onnx")
# earlier spelling, still accepted on the command line
ALIASES = {"tflite": "tflite-fp32"}


def parse_formats(text):
    """`"a,b"` -> canonical format names; unknown names are an error listing the known ones."""
    names = [ALIASES.get(f.strip(), f.strip()) for f in text.split(",") if f.strip()]
    check_formats(names)
    if not names:
        raise ValueError(f"--formats {text!r}: no format named; expected some of {', '.join(FORMATS)}")
    return names


def check_formats(formats):
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; expected some of {', '.join(FORMATS)}")


def format_of(path):
    """The runtime kind of a model path: `tflite`, `onnx` or `saved_model`."""
    path = os.fspath(path).rstrip("/")
    if path.endswith(".tflite"):
        return "tflite"
    if path.endswith(".onnx"):
        return "onnx"
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    raise ValueError(f"{path}: expected a SavedModel directory, a .tflite or a .onnx file")


def _input_name(name):
    """The contract name of a runtime input (`serving_default_label:0` -> `label`)."""
    base = name.split(":")[0]
    return base.removeprefix("serving_default_")


class _Runner:
    """`input_names` in the model's order; `input_shapes` name -> shape as the model declares it
    (None for a dynamic dimension): what a caller without the export's report can read."""

    def __init__(self, path, run_one, input_names, batch, input_shapes=None):
        self.path, self._run_one, self.input_names, self.batch = path, run_one, input_names, batch
        self.input_shapes = input_shapes or {}

    def __call__(self, inputs):
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.path} needs inputs {missing}")
        n = len(inputs["label"])
        b = self.batch or n
        if n % b:
            raise ValueError(f"{self.path} runs batches of {b}; got {n} samples")
        outs = [self._run_one({k: np.asarray(inputs[k][i:i + b]) for k in self.input_names})
                for i in range(0, n, b)]
        return np.concatenate(outs)


def _tflite(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    details = {_input_name(d["name"]): d for d in it.get_input_details()}
    out_index = it.get_output_details()[0]["index"]

    def run_one(x):
        for name, d in details.items():
            it.set_tensor(d["index"], x[name].astype(d["dtype"]))
        it.invoke()
        return it.get_tensor(out_index).copy()

    batch = int(next(iter(details.values()))["shape"][0])
    shapes = {n: tuple(int(v) for v in d["shape"]) for n, d in details.items()}
    runner = _Runner(path, run_one, list(details), batch, shapes)
    runner.interpreter = it
    return runner


def _onnx(path, threads, profile_prefix=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [x.name for x in sess.get_inputs()]
    shape0 = sess.get_inputs()[0].shape[0]
    shapes = {x.name: tuple(v if isinstance(v, int) else None for v in x.shape) for x in sess.get_inputs()}
    runner = _Runner(path, lambda x: sess.run(["image"], {n: x[n] for n in names})[0], names,
                     shape0 if isinstance(shape0, int) else None, shapes)
    runner.session = sess
    return runner


def _saved_model(path, threads):
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    f = tf.saved_model.load(path).signatures["serving_default"]
    specs = f.structured_input_signature[1]
    names = list(specs)
    batch = specs[names[0]].shape[0]
    shapes = {n: tuple(specs[n].shape.as_list()) for n in names}
    return _Runner(path, lambda x: f(**{k: tf.constant(v) for k, v in x.items()})["image"].numpy(), names, batch,
                   shapes)


def load_runner(path, threads=None, profile_prefix=None):
    """A callable running the exported model at `path` on a dict of batched inputs.

    `threads`: intra-op threads (None: the runtime's default). `profile_prefix`:
    onnxruntime profiling output (the session is at `runner.session`). Raises
    `ValueError` naming the file when it cannot be loaded.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path} not found")
    kind = format_of(path)
    try:
        if kind == "tflite":
            return _tflite(path, threads)
        if kind == "onnx":
            return _onnx(path, threads, profile_prefix)
        return _saved_model(path, threads)
    except Exception as e:  # the runtimes raise their own types for corrupt files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, ValueError) and first.startswith(path):
            raise
        raise ValueError(f"{path}: cannot load the {kind} model ({first})") from None
