"""Where the full-integer int8 model loses accuracy: one layer group at a time.

`explain_int8` quantizes one group of the generator's ops (the first conv, each
residual block, the output conv, the rest) to int8 and keeps every other op in
float, with the export's own calibration, and measures that model against the fp32
TFLite model on the export's verification inputs. A group whose int8 version alone
costs many dB is where the full model's error comes from; the groups' errors do not
add exactly (they interact), but they rank.

It uses TensorFlow's quantization debugger (`tf.lite.experimental.
QuantizationDebugger`): the model is calibrated once, then re-quantized per group
with every op outside the group on its deny list (kept in float).
"""

import os
import re
import tempfile
import warnings

import tensorflow as tf

from clade_tf.export.runtime import load_runner

OTHER = "other"  # label-map inputs, the pyramid and one-hot lookups, upsampling, final activation, tanh


def layer_groups(generator):
    """The group names in forward order: `fc`, every block, `conv_img`, then `other`."""
    return ["fc"] + [blk.name for blk in generator.blocks] + ["conv_img", OTHER]


def group_of(tensor_name, groups):
    """The group of a converted op's output tensor (names like `generator_1/up_3_1/conv_0_1/add;...`:
    Keras appends `_1` to a layer's name scope when it traces the serving function)."""
    first = tensor_name.split(";")[0]
    for part in first.split("/")[1:]:
        for name in (part, re.sub(r"_\d+$", "", part)):
            if name in groups:
                return name
    return OTHER


def _quantized_op_outputs(calibrated_model):
    """Names of the tensors an op of the calibrated float model writes."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=calibrated_model)
    tensors = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    outputs = []
    for op in interp._get_ops_details():  # the public API lists tensors, not which op writes them
        outputs.extend(tensors[i] for i in op["outputs"] if i in tensors)
    return outputs


def explain_int8(generator, fn, names, calibration, check, reference, compare):
    """`[{"group", "ops", "rel_l2", "psnr_db"}]`, worst first: the error of the model with
    only that group in int8 against `reference` (the fp32 TFLite output on `check`).

    `fn`, `names`: the serving function and its input names (`converters.serving_function`);
    `calibration`: the export's int8 representative inputs (list of input dicts);
    `compare`: `(out, ref) -> (rel_l2, psnr_db)`.
    """
    from clade_tf.export.converters import int8_converter, quiet_conversion, representative_samples

    groups = layer_groups(generator)
    # the debugger converts once per group, printing the converter's known-harmless lines each
    # time (quiet_conversion); its own interpreter is TF's deprecated one (that warning ignored)
    with quiet_conversion(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=int8_converter(fn, names, calibration),
            debug_dataset=lambda: representative_samples(calibration, names))
        ops = _quantized_op_outputs(debugger.calibrated_model)
        members = {g: [t for t in ops if group_of(t, groups) == g] for g in groups}
        rows = []
        with tempfile.TemporaryDirectory(prefix="clade-int8-") as tmp:
            path = os.path.join(tmp, "group.tflite")
            for g in groups:
                if not members[g]:
                    continue
                keep = set(members[g])
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=[t for t in ops if t not in keep])
                with open(path, "wb") as f:
                    f.write(debugger.get_nondebug_quantized_model())
                err, psnr = compare(load_runner(path)(check), reference)
                rows.append({"group": g, "ops": len(keep), "rel_l2": err, "psnr_db": psnr})
    return sorted(rows, key=lambda r: r["psnr_db"])

