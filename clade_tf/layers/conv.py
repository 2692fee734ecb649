"""Convolutions with PyTorch's padding and spectral-norm semantics.

`keras.layers.SpectralNormalization` overwrites the wrapped kernel in place with
`W / sigma` after every training call, so the trainable variable *is* the normalized
kernel. PyTorch's `torch.nn.utils.spectral_norm` keeps the raw weight `weight_orig`
trainable and recomputes `weight_orig / sigma` on every forward pass, so gradients
flow through sigma. The official CLADE/SPADE checkpoints store `weight_orig`, `u`
and `v`; this module reproduces that parameterisation exactly.
"""

import keras
import tensorflow as tf

from clade_tf.layers.init import xavier_normal


def _at_least_float32(x):
    """`x` in float32 when it is a 16-bit float (float32 and float64 stay as they are)."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def _l2_normalize(x, eps):
    # torch.nn.functional.normalize: x / max(||x||, eps)
    return x / tf.maximum(tf.norm(x), eps)


@keras.saving.register_keras_serializable(package="clade_tf")
class Conv2D(keras.layers.Layer):
    """2-D convolution with explicit PyTorch-style zero padding and optional
    PyTorch-style spectral normalization.

    With `spectral_norm=True` the trainable kernel is `kernel_orig`; the layer
    convolves with `kernel_orig / sigma`, where `sigma = u^T W v` is estimated by
    power iteration. In training calls one power iteration updates the
    non-trainable state `sn_u`, `sn_v` (no gradient flows through them, but it does
    flow through `sigma`); inference calls use the stored `u`, `v` unchanged.
    Exactly `torch.nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12)`.

    The spectral state uses `aggregation="only_first_replica"` so that the
    replica-context assignment is legal under `tf.distribute` (every replica
    computes the same `u`, `v` because the kernel is mirrored).

    Note on layout: PyTorch flattens the weight as `[out, in*kh*kw]`; Keras keeps
    the kernel as `[kh, kw, in, out]` and we flatten it as `[kh*kw*in, out]`.
    `sigma` is the same; `sn_v` is a permutation of PyTorch's `v` (the importer
    permutes it), `sn_u` is identical.

    Args:
        filters: number of output channels.
        kernel_size: square kernel size.
        strides: stride.
        padding: zero padding on each side, in pixels (PyTorch `padding=`).
        use_bias: whether to add a bias.
        spectral_norm: wrap the kernel with spectral normalization.
        kernel_initializer: initializer for the kernel (default: the official
            `xavier_normal_(gain=0.02)`).
        eps: epsilon of the power iteration's normalization.

    Example:
    >>> conv = Conv2D(64, 3, padding=1, spectral_norm=True)
    >>> y = conv(tf.zeros([1, 16, 16, 8]))
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding=0,
        use_bias=True,
        spectral_norm=False,
        kernel_initializer=None,
        eps=1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = int(padding)
        self.use_bias = bool(use_bias)
        self.spectral_norm = bool(spectral_norm)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer if kernel_initializer is not None else xavier_normal()
        )
        self.eps = float(eps)

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        k = self.kernel_size
        name = "kernel_orig" if self.spectral_norm else "kernel"
        self.kernel = self.add_weight(
            shape=(k, k, in_channels, self.filters),
            initializer=self.kernel_initializer,
            name=name,
            # read in float32 under mixed precision: sigma = u^T W v underflows in float16
            autocast=False,
        )
        self.bias = (
            self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
            if self.use_bias
            else None
        )
        if self.spectral_norm:
            # PyTorch draws u, v from N(0, 1) and normalizes them.
            self.sn_u = self.add_weight(
                shape=(self.filters,),
                initializer=keras.initializers.RandomNormal(0.0, 1.0),
                trainable=False,
                aggregation="only_first_replica",
                autocast=False,
                name="sn_u",
            )
            self.sn_v = self.add_weight(
                shape=(k * k * in_channels,),
                initializer=keras.initializers.RandomNormal(0.0, 1.0),
                trainable=False,
                aggregation="only_first_replica",
                autocast=False,
                name="sn_v",
            )
            self.sn_u.assign(_l2_normalize(self.sn_u.value, self.eps))
            self.sn_v.assign(_l2_normalize(self.sn_v.value, self.eps))

    def sigma(self, training=False):
        """Spectral norm estimate; with `training=True` runs one power iteration
        and stores the new `u`, `v`."""
        # at least float32 whatever the variables' dtype: under a plain bfloat16 policy the sum
        # u^T W v nearly cancels for a fresh kernel and bfloat16's 8 bits lose it
        w = tf.reshape(_at_least_float32(self.kernel), [-1, self.filters])  # [K, out]
        u = _at_least_float32(self.sn_u)
        v = _at_least_float32(self.sn_v)
        if training:
            w_sg = tf.stop_gradient(w)
            v = _l2_normalize(tf.linalg.matvec(w_sg, u), self.eps)  # W^T u
            u = _l2_normalize(tf.linalg.matvec(w_sg, v, transpose_a=True), self.eps)  # W v
            self.sn_u.assign(tf.cast(u, self.sn_u.dtype))
            self.sn_v.assign(tf.cast(v, self.sn_v.dtype))
            u, v = tf.stop_gradient(u), tf.stop_gradient(v)
        # u^T W v written elementwise: no MatMul op in the inference graph, so MAC
        # profiles and exported graphs only contain the real convolutions.
        return tf.reduce_sum(u * tf.reduce_sum(w * v[:, None], axis=0))

    def effective_kernel(self, training=False):
        """The kernel the convolution uses (`kernel_orig / sigma` when spectral)."""
        if not self.spectral_norm:
            return tf.convert_to_tensor(self.kernel)
        return _at_least_float32(self.kernel) / self.sigma(training)

    def call(self, x, training=None):
        y = self.convolve(x, tf.cast(self.effective_kernel(bool(training)), x.dtype))
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        return y

    def convolve(self, x, kernel):
        """This layer's convolution (padding, stride) of `x` with `kernel`, no bias."""
        k, p, s = self.kernel_size, self.padding, self.strides
        if s == 1 and 2 * p == k - 1:
            return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
        if p:
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        return tf.nn.conv2d(x, kernel, strides=s, padding="VALID")

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape

        def out(d):
            if d is None:
                return None
            return (d + 2 * self.padding - self.kernel_size) // self.strides + 1

        return (n, out(h), out(w), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=self.use_bias,
            spectral_norm=self.spectral_norm,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            eps=self.eps,
        )
        return config
