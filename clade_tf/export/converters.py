"""Converters from a generator's serving function to each export format.

TFLite uses builtin ops only (the converter fails loudly otherwise); ONNX is opset 17
through tf2onnx, with `lean_tf2onnx` bounding its memory on full-size models.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from clade_tf.export.runtime import FORMATS


class ExportError(Exception):
    """An export that cannot be produced or does not verify."""


# What TensorFlow's TFLite converter prints on every successful conversion of a serving
# function, saying nothing about the model; everything else it prints is kept.
# - absl, from `from_concrete_functions` without `trackable_obj` ("the deprecated conversion
#   path"): that path, freezing the concrete function, is the one every export is verified and
#   measured with; a trackable object would switch to a SavedModel round trip instead.
HARMLESS_ABSL = re.compile(r"Please consider providing the trackable_obj argument in the from_concrete_functions")
# - full-integer int8: the model's inputs stay float (its first ops quantize them with the
#   calibrated ranges), so there are no input statistics to give.
HARMLESS_WARNING = r"Statistics for quantized inputs were expected, but not specified"
# - the C++ quantizer's settings, printed on stderr at every int8 conversion.
HARMLESS_NATIVE = re.compile(r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
                             r"output_inference_type: \w+")


class _DropHarmlessAbsl(logging.Filter):
    def filter(self, record):
        return not HARMLESS_ABSL.search(record.getMessage())


@contextlib.contextmanager
def _quiet_absl():
    """The absl logger without the known-harmless converter message (other messages pass)."""
    logger, drop = logging.getLogger("absl"), _DropHarmlessAbsl()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _flush_streams():
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed or absent
            stream.flush()


@contextlib.contextmanager
def _native_output_held():
    """Holds what native code writes to file descriptors 1 and 2 (C++ prints there directly,
    past Python's streams) in temporary files; afterwards it is written to `sys.stdout` /
    `sys.stderr` without the `HARMLESS_NATIVE` lines, or whole when the block raised, so a
    failing conversion shows all it said."""
    with contextlib.ExitStack() as files:
        held = []
        _flush_streams()
        for fd in (1, 2):
            try:
                saved = os.dup(fd)
            except OSError:  # no such descriptor (e.g. a GUI process): nothing to hold
                continue
            tmp = files.enter_context(tempfile.TemporaryFile())
            os.dup2(tmp.fileno(), fd)
            held.append((fd, saved, tmp))
        failed = True
        try:
            yield
            failed = False
        finally:
            _flush_streams()
            for fd, saved, _ in held:
                os.dup2(saved, fd)
                os.close(saved)
            for fd, _, tmp in held:
                tmp.seek(0)
                lines = tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not failed:
                    lines = [line for line in lines if not HARMLESS_NATIVE.fullmatch(line.strip())]
                if lines:
                    stream = sys.stdout if fd == 1 else sys.stderr
                    stream.write("".join(lines))
                    stream.flush()


@contextlib.contextmanager
def quiet_conversion():
    """Silences what the TFLite converter prints on every conversion and is known to be
    harmless (`HARMLESS_ABSL`, `HARMLESS_WARNING`, `HARMLESS_NATIVE`); its other warnings
    and output still show, all of it when the conversion fails."""
    with _native_output_held(), _quiet_absl(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=HARMLESS_WARNING, category=UserWarning)
        yield


def serving_function(generator, batch, ordered_lookups=None, graph=None):
    """`(tf.function with a static input signature, input names in contract order)`.

    `graph` (an `InferenceGenerator`; a dict of `clade_tf.inference.GRAPH_OPTIONS`): traced
    now, with those graph options (`InferenceGenerator.set_graph`). `ordered_lookups`
    alone: traced now, with each CLADE lookup ordered after its layer's input when True
    and the other options as they are (`InferenceGenerator.order_lookups`)."""
    spec = generator.input_signature(batch)
    names = list(spec)

    def serve(*args):
        inputs = dict(zip(names, args))
        return {"image": generator(inputs, training=False)}

    fn = tf.function(serve, input_signature=[spec[n] for n in names])
    if graph is not None or ordered_lookups is not None:
        if graph is not None:
            generator.set_graph(graph if ordered_lookups is None else dict(graph, ordered_lookups=ordered_lookups))
        else:
            generator.order_lookups(ordered_lookups)
        fn.get_concrete_function()  # the switches are read while tracing
    return fn, names


def _converter(fn):
    with _quiet_absl():
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    return conv


def representative_samples(calibration, names):
    """The int8 representative dataset: each sample of `calibration` (a list of input
    dicts) as a list of batch-1 arrays in the order of `names`."""
    for d in calibration:
        for i in range(len(d["label"])):
            yield [np.asarray(d[n][i:i + 1]) for n in names]


def int8_converter(fn, names, calibration):
    """The full-integer int8 converter (float fallback allowed; float inputs and output),
    calibrated on `calibration` (a list of input dicts), one sample at a time."""
    conv = _converter(fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: representative_samples(calibration, names)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv


def tflite_bytes(fn, names, kind, calibration=None):
    """The `.tflite` flatbuffer of `kind` (`tflite-fp32`, `-fp16`, `-int8-dynamic`, `-int8`);
    `calibration` (a list of input dicts) is the int8 representative dataset."""
    if kind == "tflite-int8":
        conv = int8_converter(fn, names, calibration)
    else:
        conv = _converter(fn)
    if kind == "tflite-fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-int8-dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        with quiet_conversion():
            return conv.convert()
    except Exception as e:  # noqa: BLE001 - the converter raises several types
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


def write_format(kind, path, fn, names, weights=(), calibration=None):
    """Converts the serving function `fn` (from `serving_function`) to `kind` at `path`.
    `weights`: the model's variables (SavedModel); `calibration`: int8 inputs."""
    if kind not in FORMATS:
        raise ExportError(f"unknown format {kind!r}; expected one of {', '.join(FORMATS)}")
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
        data = tflite_bytes(fn, names, kind, calibration)
        with open(path, "wb") as f:
            f.write(data)
