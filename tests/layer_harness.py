"""One check of the Keras layer contract, in the spirit of keras-hub's `run_layer_test`.

`run_layer_test(cls, init_kwargs, input_data)` checks, for a layer (or model) class:

(a) serialization: `get_config` -> `from_config` gives the same config, and
    `keras.saving.serialize_keras_object` / `deserialize_keras_object` (through JSON)
    give back the same class and config;
(b) a symbolic call on `keras.KerasTensor`s, and `compute_output_shape` where the
    layer defines it, agree with the eager output shapes;
(c) a training step: a gradient for every trainable weight, all finite, and an
    optimizer step that keeps the weights finite;
(d) under `mixed_float16`, `mixed_bfloat16` and plain `bfloat16`: every variable in the
    policy's variable dtype, every sublayer on the layer's policy, outputs in the compute
    dtype, (c) again, and outputs (inference mode, the float32 weights copied) within
    `tolerance[policy]` of the float32 outputs, relative to their largest magnitude;
(e) the number of trainable and non-trainable weights, after `build(input_shape)` alone
    (no call: nothing may be created lazily in `call`), after the eager call and after the
    symbolic one;
(f) a compiled `model.fit` step (the layer inside a `keras.Model`, mean squared error to
    random targets, SGD): the loss finite, every trainable weight finite, and (where the
    layer has trainable weights) at least one of them moved.

`input_data` is the tuple of positional call arguments (tensors or dicts of tensors,
e.g. `(x, {"label": label})`).
"""

import json

import keras
import numpy as np
import tensorflow as tf

# Relative to max |float32 output|: float16 keeps 11 significant bits, bfloat16 8; plain
# bfloat16 also rounds the weights (and accumulates in bfloat16 where the kernel does).
TOLERANCE = {"mixed_float16": 5e-3, "mixed_bfloat16": 3e-2, "bfloat16": 6e-2}


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


def check_symbolic(layer, input_data, eager_out, counts=None):
    config = layer.get_config()
    fresh = type(layer).from_config(config)
    sym = tf.nest.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype), input_data)
    sym_out = fresh(*sym)
    check_weight_counts(fresh, counts, "after the symbolic call")
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
        assert g.dtype == w.dtype, (w.path, g.dtype, w.dtype)
        assert np.isfinite(tf.convert_to_tensor(g).numpy()).all(), w.path
    if weights:
        keras.optimizers.SGD(1e-3).apply_gradients(zip(grads, weights))
        for w in weights:
            assert np.isfinite(w.numpy()).all(), w.path


def _rel_err(a, b):
    a = np.asarray(tf.cast(a, tf.float32))
    b = np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_weight_counts(layer, counts, when):
    """`counts`: `(trainable, non_trainable)`, or None to skip."""
    assert layer.built, f"{layer.name} not built {when}"
    if counts is None:
        return
    got = (len(layer.trainable_weights), len(layer.non_trainable_weights))
    assert got == tuple(counts), (
        f"{when}: {got[0]} trainable / {got[1]} non-trainable weights, expected {counts[0]} / {counts[1]}: "
        f"{[w.path for w in layer.weights]}")


def check_build_only(cls, init_kwargs, input_data, counts, expected_shapes):
    """`build(input_shape)` without a call creates every weight; the call then adds none."""
    layer = cls(**init_kwargs)
    layer.build(*_shape_structure(input_data))
    check_weight_counts(layer, counts, "after build(input_shape)")
    n = len(layer.weights)
    out = layer(*input_data)
    assert len(layer.weights) == n, f"the call after build() created {[w.path for w in layer.weights[n:]]}"
    assert _shapes(out) == expected_shapes, (_shapes(out), expected_shapes)


class FitModel(keras.Model):
    """The layer under test as a model: positional inputs in, its outputs as a flat list of float32."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs, training=None):
        return [tf.cast(t, "float32") for t in _flat(self.layer(*inputs, training=training))]


def check_fit_step(layer, input_data, seed=1):
    """One compiled (graph, not eager) `fit` step on random targets moves a trainable weight and keeps all
    finite; returns how many moved."""
    rng = np.random.default_rng(seed)
    out = _flat(layer(*input_data))
    targets = [rng.standard_normal(tuple(t.shape)).astype(np.float32) for t in out]
    model = FitModel(layer, name="fit_model")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=["mse"] * len(out), run_eagerly=False)
    before = [w.numpy() for w in layer.trainable_weights]
    data = tf.data.Dataset.from_tensors((tuple(input_data), tuple(targets)))
    hist = model.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(hist.history["loss"]).all(), hist.history
    moved = 0
    for w, b in zip(layer.trainable_weights, before):
        assert np.isfinite(w.numpy()).all(), w.path
        moved += not np.array_equal(w.numpy(), b)
    assert not before or moved, "compiled fit step moved no trainable weight"
    return moved


def check_policy(cls, init_kwargs, input_data, reference, ref_outputs, policy, tolerance):
    layer = cls(**init_kwargs, dtype=policy)
    layer(*input_data)
    layer.set_weights(reference.get_weights())
    variable_dtype = keras.mixed_precision.DTypePolicy(policy).variable_dtype
    bad = [v.path for v in layer.weights if v.dtype != variable_dtype]
    assert not bad, f"{policy}: variables not {variable_dtype}: {bad}"
    off = [sub.name for sub in layer._flatten_layers() if sub.dtype_policy.name != policy]
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
                   policies=("mixed_float16", "mixed_bfloat16", "bfloat16"), tolerance=None, prepare=None,
                   expected_num_weights=None, fit=True):
    """Runs (a)-(f) (module doc) on `cls(**init_kwargs)` called as `layer(*input_data)`.

    `expected_output_shape`: a shape, or a list of shapes for nested outputs.
    `expected_num_weights`: `(trainable, non_trainable)`, counted from the layer's definition
    (None skips the counts, not the build-only path).
    `fit`: run the compiled `fit` step (f).
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
    check_weight_counts(layer, expected_num_weights, "after the eager call")
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
        check_symbolic(layer, input_data, out, expected_num_weights)
    check_build_only(cls, init_kwargs, input_data, expected_num_weights, _shapes(out))
    assert all(v.dtype == "float32" for v in layer.weights)

    ref_outputs = [t.numpy() for t in _flat(out)]
    for policy in policies:
        check_policy(cls, init_kwargs, input_data, layer, ref_outputs, policy, tolerance[policy])
    check_training_step(layer, input_data)
    if fit:
        check_fit_step(layer, input_data)
    return layer
