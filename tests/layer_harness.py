"""One check of the Keras layer contract, in the spirit of keras-hub's `run_layer_test`.

`run_layer_test(cls, init_kwargs, input_data)` checks, for a layer (or model) class:

(a) serialization: `get_config` -> `from_config` gives the same config, and
    `keras.saving.serialize_keras_object` / `deserialize_keras_object` (through JSON)
    give back the same class and config;
(b) a symbolic call on `keras.KerasTensor`s, and `compute_output_shape` where the
    layer defines it, agree with the eager output shapes;
(c) a training step: a gradient for every trainable weight, all finite, and an
    optimizer step that keeps the weights finite;
(d) under `float32`, `mixed_float16` and `mixed_bfloat16`: every variable float32,
    every sublayer on the layer's policy, outputs in the compute dtype, (c) again, and
    outputs (inference mode, float32 weights copied) within `tolerance[policy]` of the
    float32 outputs, relative to their largest magnitude.

`input_data` is the tuple of positional call arguments (tensors or dicts of tensors,
e.g. `(x, {"label": label})`).
"""

import json

import keras
import numpy as np
import tensorflow as tf

# Relative to max |float32 output|: float16 keeps 11 significant bits, bfloat16 8.
TOLERANCE = {"mixed_float16": 5e-3, "mixed_bfloat16": 3e-2}


def _flat(x):
    return tf.nest.flatten(x)


def _shapes(x):
    return [tuple(t.shape) for t in _flat(x)]


def _shape_structure(x):
    return tf.nest.map_structure(lambda t: tuple(t.shape), x)


def _overrides(layer, method):
    return getattr(type(layer), method) is not getattr(keras.layers.Layer, method)


def check_serialization(cls, init_kwargs):
    layer = cls(**init_kwargs)
    config = layer.get_config()
    clone = cls.from_config(config)
    assert type(clone) is cls
    assert clone.get_config() == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is cls
    assert revived.get_config() == config


def check_symbolic(layer, input_data, eager_out):
    config = layer.get_config()
    fresh = type(layer).from_config(config)
    sym = tf.nest.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype), input_data)
    sym_out = fresh(*sym)
    assert _shapes(sym_out) == _shapes(eager_out), (_shapes(sym_out), _shapes(eager_out))
    if _overrides(layer, "compute_output_shape"):
        shapes = layer.compute_output_shape(*_shape_structure(input_data))
        if isinstance(shapes, tuple) and shapes and not isinstance(shapes[0], (tuple, list)):
            shapes = [shapes]
        got = [tuple(s) for s in _flat_shapes(shapes)]
        assert got == _shapes(eager_out), (got, _shapes(eager_out))


def _flat_shapes(shapes):
    """Flattens a nest of shape tuples (leaves: tuples of ints / None)."""
    if isinstance(shapes, (tuple, list)) and all(
        isinstance(d, (int, type(None))) for d in shapes
    ):
        return [shapes]
    out = []
    for s in shapes:
        out.extend(_flat_shapes(s))
    return out


def check_training_step(layer, input_data, seed=0):
    """Gradients of a random projection of the outputs: present and finite for every
    trainable weight; one SGD step keeps the weights finite."""
    rng = np.random.default_rng(seed)
    with tf.GradientTape() as tape:
        out = _flat(layer(*input_data, training=True))
        loss = tf.add_n([
            tf.reduce_mean(tf.cast(t, tf.float32)
                           * tf.constant(rng.standard_normal(t.shape).astype(np.float32)))
            for t in out
        ])
    weights = layer.trainable_weights
    grads = tape.gradient(loss, weights)
    missing = [w.path for w, g in zip(weights, grads) if g is None]
    assert not missing, f"no gradient for {missing}"
    for w, g in zip(weights, grads):
        assert g.dtype == tf.float32, (w.path, g.dtype)
        assert np.isfinite(tf.convert_to_tensor(g).numpy()).all(), w.path
    if weights:
        keras.optimizers.SGD(1e-3).apply_gradients(zip(grads, weights))
        for w in weights:
            assert np.isfinite(w.numpy()).all(), w.path


def _rel_err(a, b):
    a = np.asarray(tf.cast(a, tf.float32))
    b = np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_policy(cls, init_kwargs, input_data, reference, ref_outputs, policy, tolerance):
    layer = cls(**init_kwargs, dtype=policy)
    layer(*input_data)
    layer.set_weights(reference.get_weights())
    bad = [v.path for v in layer.weights if v.dtype != "float32"]
    assert not bad, f"{policy}: variables not float32: {bad}"
    off = [l.name for l in layer._flatten_layers() if l.dtype_policy.name != policy]
    assert not off, f"{policy}: sublayers on another policy: {off}"
    assert cls.from_config(layer.get_config()).dtype_policy.name == policy
    out = _flat(layer(*input_data, training=False))
    compute = keras.mixed_precision.DTypePolicy(policy).compute_dtype
    for t, ref in zip(out, ref_outputs):
        assert t.dtype == compute, f"{policy}: output {t.dtype}, expected {compute}"
        if tolerance is not None:
            err = _rel_err(t, ref)
            assert err <= tolerance, f"{policy}: relative error {err:.2e} > {tolerance:.0e}"
    check_training_step(layer, input_data)


def run_layer_test(cls, init_kwargs, input_data, expected_output_shape=None, symbolic=True,
                   policies=("mixed_float16", "mixed_bfloat16"), tolerance=None, prepare=None):
    """Runs (a)-(d) (module doc) on `cls(**init_kwargs)` called as `layer(*input_data)`.

    `expected_output_shape`: a shape, or a list of shapes for nested outputs.
    `tolerance`: per-policy overrides of `TOLERANCE` (None skips the comparison).
    `prepare(layer)`: run on the built float32 layer before its weights are copied
    (e.g. `clade_tf.inference.calibrate_batch_norm`).
    Returns the float32 layer.
    """
    tolerance = {**TOLERANCE, **(tolerance or {})}
    input_data = tuple(input_data)
    check_serialization(cls, init_kwargs)

    layer = cls(**init_kwargs)
    out = layer(*input_data)
    if prepare is not None:
        prepare(layer)
        out = layer(*input_data)
    assert all(t.dtype == tf.float32 for t in _flat(out))
    if expected_output_shape is not None:
        expected = expected_output_shape
        if not isinstance(expected, list):
            expected = [expected]
        assert _shapes(out) == [tuple(s) for s in expected], (_shapes(out), expected)
    if symbolic:
        check_symbolic(layer, input_data, out)
    assert all(v.dtype == "float32" for v in layer.weights)

    ref_outputs = [t.numpy() for t in _flat(out)]
    for policy in policies:
        check_policy(cls, init_kwargs, input_data, layer, ref_outputs, policy, tolerance[policy])
    check_training_step(layer, input_data)
    return layer
