"""Parameter and MAC counts measured on built Keras models.

MACs are read off the traced inference graph (batch 1), not from formulas: every
`Conv2D` op contributes `out_elements * in_channels/groups * kh * kw`, every
`MatMul` (Dense) `rows * in * out`; biases and elementwise ops are not counted.
The modulation's elementwise operations are reported separately, from each
conditional norm layer's own count at its input shape.
"""

import numpy as np
import tensorflow as tf

from clade_tf.config import GeneratorConfig
from clade_tf.networks.generator import Generator

MODES = ("none", "spade", "clade", "clade-icpe")


def count_params(model):
    """Trainable parameters (spectral-norm u/v and BatchNorm statistics excluded,
    as they are buffers in PyTorch)."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def _static(shape, what):
    dims = shape.as_list()
    if any(d is None for d in dims):
        raise ValueError(f"MAC count needs static shapes, {what} has {dims}")
    return dims


def graph_macs(concrete_function):
    """Conv/Dense multiply-accumulates of a traced `tf.function`, per its input batch."""
    macs = 0
    for op in concrete_function.graph.get_operations():
        if op.type in ("Conv2D", "DepthwiseConv2dNative"):
            out = _static(op.outputs[0].shape, op.name)
            kh, kw, cin, _ = _static(op.inputs[1].shape, op.name)
            if op.type == "DepthwiseConv2dNative":
                cin = 1
            macs += int(np.prod(out)) * cin * kh * kw
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a = _static(op.inputs[0].shape, op.name)
            b = _static(op.inputs[1].shape, op.name)
            ta = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
            tb = op.get_attr("transpose_b") if op.type == "MatMul" else op.get_attr("adj_y")
            m, k = (a[-1], a[-2]) if ta else (a[-2], a[-1])
            n = b[-2] if tb else b[-1]
            batch = int(np.prod(a[:-2])) if len(a) > 2 else 1
            macs += batch * m * k * n
    return int(macs)


def generator_profile(config: GeneratorConfig):
    """`{"params", "macs", "elementwise_ops"}` of one generator configuration (batch 1)."""
    g = Generator(config, check_labels=False)
    g.build()
    spec = g.input_signature(batch_size=1)
    fn = tf.function(lambda inputs: g(inputs, training=False))
    concrete = fn.get_concrete_function(spec)
    elementwise = sum(norm.elementwise_ops(shape) for norm, shape in g.norm_layers())
    return {
        "params": count_params(g),
        "macs": graph_macs(concrete),
        "elementwise_ops": int(elementwise),
    }


def profile_modes(base: GeneratorConfig, modes=MODES):
    """Profiles every norm mode of `base`, with overheads in % over `none`."""
    import dataclasses

    results = {m: generator_profile(dataclasses.replace(base, norm_mode=m)) for m in modes}
    ref = results.get("none")
    for r in results.values():
        if ref is not None:
            r["params_overhead_pct"] = 100.0 * (r["params"] - ref["params"]) / ref["params"]
            r["macs_overhead_pct"] = 100.0 * (r["macs"] - ref["macs"]) / ref["macs"]
    return results
