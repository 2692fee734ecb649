"""Normalization layers: parameter-free norms, and the conditional norms of the
generator (CLADE, CLADE-ICPE, SPADE, plain affine).

All layers take NHWC float tensors. Every conditional norm is called as
`norm(x, cond)`, where `cond` is the generator's label-pyramid level at x's
resolution (`Generator.pyramid` builds it once per forward pass):

- `label`: int32 `[N, H, W]` class ids;
- `edge`: float `[N, H, W, 1]` instance-boundary map (models with instances);
- `dist`: float `[N, H, W, 2]` intra-class positional map (CLADE-ICPE);
- `segmap`: float `[N, H, W, S]` one-hot labels (+ edge channel), for SPADE.

Each norm reads only the keys it needs.
"""

import keras
import tensorflow as tf

from clade_tf.layers.conv import Conv2D

PARAM_FREE_NORMS = ("syncbatch", "batch", "instance")
# The name `clade_tf.config` validates against.
_KINDS = PARAM_FREE_NORMS

# PyTorch defaults: eps 1e-5, momentum 0.1 (running = 0.9 * running + 0.1 * batch).
EPSILON = 1e-5
KERAS_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="clade_tf")
class ParamFreeNorm(keras.layers.Layer):
    """Normalization without learned affine parameters.

    Args:
        kind: `"syncbatch"` (Keras BatchNormalization with `synchronized=True`,
            statistics all-reduced across replicas), `"batch"` (per-replica batch
            statistics) or `"instance"` (per-sample moments over H, W, written
            with 4-D ops only so it converts cleanly to TFLite/ONNX).
        epsilon: variance epsilon (PyTorch: 1e-5).

    Under mixed precision the moments are computed in float32 (BatchNormalization
    does the same).

    Known difference: Keras updates the moving variance with the biased batch
    variance, PyTorch with the unbiased one (factor n/(n-1)). Normalization in
    training and inference with given statistics is identical.

    Example:
    >>> y = ParamFreeNorm("instance")(tf.random.normal([2, 8, 8, 4]))
    """

    def __init__(self, kind="syncbatch", epsilon=EPSILON, **kwargs):
        super().__init__(**kwargs)
        if kind not in PARAM_FREE_NORMS:
            raise ValueError(
                f"param-free norm {kind!r} is not one of {', '.join(PARAM_FREE_NORMS)}"
            )
        self.kind = kind
        self.epsilon = float(epsilon)
        self.bn = None
        if kind in ("syncbatch", "batch"):
            self.bn = keras.layers.BatchNormalization(
                momentum=KERAS_MOMENTUM,
                epsilon=self.epsilon,
                center=False,
                scale=False,
                synchronized=(kind == "syncbatch"),
                dtype=self.dtype_policy,
                name="bn",
            )

    def build(self, input_shape):
        if self.bn is not None:
            self.bn.build(input_shape)

    def call(self, x, training=None):
        if self.bn is not None:
            return self.bn(x, training=training)
        dtype = x.dtype
        x = tf.cast(x, tf.float32)  # moments in float32 (mixed precision)
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        centered = x - mean
        var = tf.reduce_mean(tf.square(centered), axis=[1, 2], keepdims=True)
        return tf.cast(centered * tf.math.rsqrt(var + self.epsilon), dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, epsilon=self.epsilon)
        return config


def _shape_elements(shape):
    n = 1
    for d in shape[1:]:
        n *= int(d)
    return n


class ConditionalNorm(keras.layers.Layer):
    """Base of the generator's normalizations: `out = modulate(norm(x), cond)`.

    Subclasses implement `call(x, cond, training=None)`, reading what they need
    from `cond` (see the module doc), and `build(x_shape, cond_shape=None)`
    (`cond_shape`: the dict of the maps' shapes; the maps share x's N, H, W).

    Args:
        param_free_norm: `"syncbatch"`, `"batch"` or `"instance"`: the
            normalization before the modulation (attribute `norm`).
    """

    def __init__(self, param_free_norm="syncbatch", **kwargs):
        super().__init__(**kwargs)
        self.param_free_norm = param_free_norm
        self.norm = self.make_param_free_norm(param_free_norm)

    def make_param_free_norm(self, kind):
        """The layer behind `self.norm`. Inference layers whose normalization is
        folded into the modulation override this (`clade_tf.inference`)."""
        return ParamFreeNorm(kind, name="param_free_norm", dtype=self.dtype_policy)

    def build(self, x_shape, cond_shape=None):
        self.norm.build(x_shape)

    def call(self, x, cond, training=None):
        raise NotImplementedError

    def _cond(self, cond, key, what):
        if not isinstance(cond, dict) or cond.get(key) is None:
            raise ValueError(f"{self.name}: {what} needs the `{key}` map")
        return cond[key]

    def elementwise_ops(self, input_shape):
        """Elementwise ops of the modulation for one sample (normalization excluded)."""
        raise NotImplementedError

    def compute_output_shape(self, x_shape, cond_shape=None):
        return tuple(x_shape)

    def get_config(self):
        config = super().get_config()
        config.update(param_free_norm=self.param_free_norm)
        return config


@keras.saving.register_keras_serializable(package="clade_tf")
class ClassAdaptiveNorm(ConditionalNorm):
    """CLADE: class-adaptive (de)normalization, `out = norm(x) * gamma[label] + beta[label]`.

    The modulation tables `gamma`, `beta` have shape `[num_classes, channels]`;
    `gamma` starts uniform in [0, 1), `beta` at zero (as the official `ClassAffine`).
    The lookup is a `tf.gather` on the int32 label map (no one-hot, no conv).

    With `use_icpe=True` (CLADE-ICPE) the looked-up parameters are modulated by the
    2-channel intra-class positional map: `gamma' = gamma[label] * (1 + conv_g(dist))`,
    `beta' = beta[label] * (1 + conv_b(dist))`, each a 1x1 conv 2->1 with bias.

    With `use_instance_edge=True` a 1x1 conv (1->1, with bias) of the instance edge
    map is concatenated after the modulation, so the output has `channels + 1`
    channels (the official CLADE's `inst_conv`).

    Args:
        num_classes: number of label classes, don't-care class included.
        param_free_norm: `"syncbatch"`, `"batch"` or `"instance"`.
        use_instance_edge: append the conv'd instance edge channel.
        use_icpe: enable the intra-class positional encoding.

    Call args:
        x: `[N, H, W, C]` activations.
        cond: dict with `label`, and `dist` (CLADE-ICPE) / `edge` (instance edge).

    Example:
    >>> norm = ClassAdaptiveNorm(num_classes=4, param_free_norm="instance")
    >>> y = norm(tf.random.normal([1, 8, 8, 16]), {"label": tf.zeros([1, 8, 8], tf.int32)})
    """

    def __init__(
        self,
        num_classes,
        param_free_norm="syncbatch",
        use_instance_edge=False,
        use_icpe=False,
        **kwargs,
    ):
        super().__init__(param_free_norm, **kwargs)
        self.num_classes = int(num_classes)
        self.use_instance_edge = bool(use_instance_edge)
        self.use_icpe = bool(use_icpe)
        if self.use_icpe:
            self.dist_conv_gamma = Conv2D(1, 1, dtype=self.dtype_policy, name="dist_conv_gamma")
            self.dist_conv_beta = Conv2D(1, 1, dtype=self.dtype_policy, name="dist_conv_beta")
        if self.use_instance_edge:
            self.edge_conv = Conv2D(1, 1, dtype=self.dtype_policy, name="edge_conv")

    def build(self, x_shape, cond_shape=None):
        super().build(x_shape)
        channels = int(x_shape[-1])
        self.gamma = self.add_weight(
            shape=(self.num_classes, channels),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
            name="gamma",
        )
        self.beta = self.add_weight(
            shape=(self.num_classes, channels), initializer="zeros", name="beta"
        )
        spatial = tuple(x_shape[:-1])
        if self.use_icpe:
            self.dist_conv_gamma.build(spatial + (2,))
            self.dist_conv_beta.build(spatial + (2,))
        if self.use_instance_edge:
            self.edge_conv.build(spatial + (1,))

    def class_rows(self, table, label):
        """`table[label]`: the per-class rows of `table` `[K, C]` at every pixel, `[N, H, W, C]`
        (the export's inference layer gathers them another way, with the same numbers)."""
        return tf.gather(table, label)

    def modulation(self, label, dist=None, dtype="float32"):
        """Per-pixel `(gamma, beta)`, each `[N, H, W, C]`."""
        gamma = tf.cast(self.class_rows(self.gamma, label), dtype)
        beta = tf.cast(self.class_rows(self.beta, label), dtype)
        if self.use_icpe:
            if dist is None:
                raise ValueError(f"{self.name}: CLADE-ICPE needs the `dist` map")
            dist = tf.cast(dist, dtype)
            gamma = gamma * (1.0 + self.dist_conv_gamma(dist))
            beta = beta * (1.0 + self.dist_conv_beta(dist))
        return gamma, beta

    def call(self, x, cond, training=None):
        out = self.modulate(x, cond, training=training)
        if self.use_instance_edge:
            out = tf.concat([out, self.edge_feature(cond, x.dtype)], axis=-1)
        return out

    def modulate(self, x, cond, training=None):
        """`norm(x) * gamma[label] + beta[label]`: the output without the edge channel."""
        label = self._cond(cond, "label", "CLADE")
        dist = self._cond(cond, "dist", "CLADE-ICPE") if self.use_icpe else None
        gamma, beta = self.modulation(label, dist, x.dtype)
        return self.norm(x, training=training) * gamma + beta

    def edge_feature(self, cond, dtype):
        """The appended channel: the 1x1 conv of the instance edge map, `[N, H, W, 1]`."""
        edge = self._cond(cond, "edge", "instance-edge CLADE")
        return self.edge_conv(tf.cast(edge, dtype))

    def elementwise_ops(self, input_shape):
        chw = _shape_elements(input_shape)
        hw = chw // int(input_shape[-1])
        ops = 2 * chw  # * gamma, + beta
        if self.use_icpe:
            ops += 2 * chw + 2 * hw  # gamma * (1 + .), beta * (1 + .)
        return ops

    def compute_output_shape(self, x_shape, cond_shape=None):
        extra = 1 if self.use_instance_edge else 0
        return tuple(x_shape[:-1]) + (x_shape[-1] + extra,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            use_instance_edge=self.use_instance_edge,
            use_icpe=self.use_icpe,
        )
        return config


@keras.saving.register_keras_serializable(package="clade_tf")
class SpatiallyAdaptiveNorm(ConditionalNorm):
    """SPADE: `out = norm(x) * (1 + gamma(seg)) + beta(seg)` with gamma, beta predicted
    by convolutions over the semantic map (the baseline CLADE replaces).

    `mlp_shared` is a `kernel_size` conv (semantic channels -> `hidden`) + ReLU, then
    `mlp_gamma`, `mlp_beta` are `kernel_size` convs (`hidden` -> channels).

    Args:
        param_free_norm: `"syncbatch"`, `"batch"` or `"instance"`.
        hidden: channels of the shared embedding (official: 128).
        kernel_size: conv kernel size (official: 3).

    Call args:
        x: `[N, H, W, C]` activations.
        cond: dict with `segmap`, the `[N, H, W, S]` float semantic map at the same
            resolution (one-hot labels, plus the instance edge channel where configured).

    Example:
    >>> norm = SpatiallyAdaptiveNorm("instance")
    >>> seg = tf.one_hot(tf.zeros([1, 8, 8], tf.int32), 4)
    >>> y = norm(tf.random.normal([1, 8, 8, 16]), {"segmap": seg})
    """

    def __init__(self, param_free_norm="syncbatch", hidden=128, kernel_size=3, **kwargs):
        super().__init__(param_free_norm, **kwargs)
        self.hidden = int(hidden)
        self.kernel_size = int(kernel_size)
        self.mlp_shared = self._conv(self.hidden, "mlp_shared")
        # Their width is x's channel count, known at build.
        self.mlp_gamma_conv = None
        self.mlp_beta_conv = None

    def _conv(self, filters, name):
        return Conv2D(filters, self.kernel_size, padding=self.kernel_size // 2,
                      dtype=self.dtype_policy, name=name)

    def build(self, x_shape, cond_shape=None):
        if not isinstance(cond_shape, dict) or cond_shape.get("segmap") is None:
            raise ValueError(f"{self.name}: SPADE needs the `segmap` map's shape to build")
        super().build(x_shape)
        channels = int(x_shape[-1])
        segmap_shape = tuple(cond_shape["segmap"])
        self.mlp_shared.build(segmap_shape)
        hidden_shape = segmap_shape[:-1] + (self.hidden,)
        self.mlp_gamma_conv = self._conv(channels, "mlp_gamma")
        self.mlp_beta_conv = self._conv(channels, "mlp_beta")
        self.mlp_gamma_conv.build(hidden_shape)
        self.mlp_beta_conv.build(hidden_shape)

    def call(self, x, cond, training=None):
        segmap = self._cond(cond, "segmap", "SPADE")
        actv = tf.nn.relu(self.mlp_shared(tf.cast(segmap, x.dtype)))
        gamma = self.mlp_gamma_conv(actv)
        beta = self.mlp_beta_conv(actv)
        return self.norm(x, training=training) * (1.0 + gamma) + beta

    def elementwise_ops(self, input_shape):
        return 3 * _shape_elements(input_shape)  # 1 + gamma, *, + beta

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="clade_tf")
class AffineNorm(ConditionalNorm):
    """Plain normalization with a per-channel affine (no label conditioning).

    The `none` norm mode of the generator: the unconditional backbone that
    CLADE and SPADE overheads are measured against. Affine initialised as the
    official `init_weights` does for BatchNorm (gamma ~ N(1, 0.02), beta = 0).
    `cond` is accepted, for the common interface, and ignored.

    Args:
        param_free_norm: `"syncbatch"`, `"batch"` or `"instance"`.
    """

    def build(self, x_shape, cond_shape=None):
        super().build(x_shape)
        channels = int(x_shape[-1])
        self.gamma = self.add_weight(
            shape=(channels,),
            initializer=keras.initializers.RandomNormal(1.0, 0.02),
            name="gamma",
        )
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x, cond=None, training=None):
        return self.norm(x, training=training) * tf.cast(self.gamma, x.dtype) + tf.cast(
            self.beta, x.dtype
        )

    def elementwise_ops(self, input_shape):
        return 2 * _shape_elements(input_shape)
