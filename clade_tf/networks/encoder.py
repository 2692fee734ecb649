"""Convolutional image encoder for VAE mode (official `ConvEncoder`)."""

import keras
import tensorflow as tf

from clade_tf.layers.conv import Conv2D
from clade_tf.layers.init import xavier_normal
from clade_tf.layers.normalization import ParamFreeNorm


@keras.saving.register_keras_serializable(package="clade_tf")
class ConvEncoder(keras.Model):
    """Image -> (mu, logvar) of the style latent.

    The image is resized (bilinear) to `input_size` x `input_size` (official: 256),
    then six stride-2 3x3 spectral-norm convs without bias (widths ngf, 2ngf, 4ngf,
    8ngf, 8ngf, 8ngf), each followed by instance norm and LeakyReLU(0.2), then two
    Dense heads on the NCHW-flattened features (PyTorch's `view` order, so official
    weights import unchanged).

    Args:
        ngf: base width (official: the generator's ngf, 64).
        z_dim: latent size (256).
        input_size: square size the image is resized to (256; must be divisible by 64).

    Example:
    >>> e = ConvEncoder(ngf=8, z_dim=16, input_size=64)
    >>> mu, logvar = e(tf.zeros([2, 64, 64, 3]))
    """

    def __init__(self, ngf=64, z_dim=256, input_size=256, **kwargs):
        super().__init__(**kwargs)
        self.ngf, self.z_dim, self.input_size = int(ngf), int(z_dim), int(input_size)
        if self.input_size % 64:
            raise ValueError(f"ConvEncoder: input_size={input_size} must be a multiple of 64")
        widths = [ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8]
        self.convs = [
            Conv2D(w, 3, strides=2, padding=1, use_bias=False, spectral_norm=True,
                   dtype=self.dtype_policy, name=f"layer{i + 1}")
            for i, w in enumerate(widths)
        ]
        self.norms = [ParamFreeNorm("instance", dtype=self.dtype_policy, name=f"layer{i + 1}_norm")
                      for i in range(6)]
        self.s0 = self.input_size // 64
        self.fc_mu = self._dense("fc_mu")
        self.fc_var = self._dense("fc_var")

    def _dense(self, name):
        return keras.layers.Dense(self.z_dim, kernel_initializer=xavier_normal(),
                                  dtype=self.dtype_policy, name=name)

    def build(self, input_shape=None):
        if self.built:
            return
        shape = (None, self.input_size, self.input_size, 3)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        flat = (None, self.ngf * 8 * self.s0 * self.s0)
        self.fc_mu.build(flat)
        self.fc_var.build(flat)
        self.built = True

    def call(self, x, training=None):
        if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
            x = tf.image.resize(x, [self.input_size, self.input_size], method="bilinear")
        for conv, norm in zip(self.convs, self.norms):
            x = tf.nn.leaky_relu(norm(conv(x, training=training), training=training), 0.2)
        x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, self.ngf * 8 * self.s0 * self.s0])
        return self.fc_mu(x), self.fc_var(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.z_dim), (input_shape[0], self.z_dim)

    def get_config(self):
        config = super().get_config()
        config.update(ngf=self.ngf, z_dim=self.z_dim, input_size=self.input_size)
        return config
