"""Multiscale PatchGAN discriminator (official `MultiscaleDiscriminator` / `NLayerDiscriminator`)."""

import keras
import tensorflow as tf

from clade_tf.config import DiscriminatorConfig
from clade_tf.layers.conv import Conv2D
from clade_tf.layers.normalization import ParamFreeNorm


def avg_pool_3x3_s2(x):
    """`F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)`.

    TF's `SAME` pooling pads asymmetrically (0 before, 1 after), which shifts every
    window by one pixel; this pads 1 on both sides and divides by the number of
    real (unpadded) pixels in each window.
    """
    pad = [[0, 0], [1, 1], [1, 1], [0, 0]]
    total = tf.nn.avg_pool2d(tf.pad(x, pad), 3, 2, "VALID")
    ones = tf.pad(tf.ones_like(x[..., :1]), pad)
    frac = tf.nn.avg_pool2d(ones, 3, 2, "VALID")  # real pixels / 9
    return total / frac


@keras.saving.register_keras_serializable(package="clade_tf")
class NLayerDiscriminator(keras.layers.Layer):
    """One PatchGAN scale: kernel 4, padding 2, LeakyReLU(0.2).

    Layer 0: conv (stride 2, bias, no norm). Layers 1 .. n_layers-1: spectral-norm
    conv without bias + instance norm (stride 2, the last one stride 1), width
    doubling up to 512. Final: conv to 1 channel (stride 1, bias). Returns every
    layer's output; the last is the patch prediction.

    Args:
        n_layers: number of conv layers before the prediction conv (official 4).
        ndf: width of the first layer (official 64).
    """

    def __init__(self, n_layers=4, ndf=64, **kwargs):
        super().__init__(**kwargs)
        self.n_layers = int(n_layers)
        self.ndf = int(ndf)
        self.convs, self.norms = [], []
        nf = self.ndf
        dt = self.dtype_policy
        self.convs.append(Conv2D(nf, 4, strides=2, padding=2, dtype=dt, name="model0_conv"))
        self.norms.append(None)
        for n in range(1, self.n_layers):
            nf = min(nf * 2, 512)
            stride = 1 if n == self.n_layers - 1 else 2
            self.convs.append(
                Conv2D(nf, 4, strides=stride, padding=2, use_bias=False, spectral_norm=True,
                       dtype=dt, name=f"model{n}_conv")
            )
            self.norms.append(ParamFreeNorm("instance", dtype=dt, name=f"model{n}_norm"))
        self.convs.append(
            Conv2D(1, 4, strides=1, padding=2, dtype=dt, name=f"model{self.n_layers}_conv")
        )
        self.norms.append(None)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if norm is not None:
                norm.build(shape)

    def call(self, x, training=None):
        feats = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv(x, training=training)
            if norm is not None:
                x = norm(x, training=training)
            if i < len(self.convs) - 1:
                x = tf.nn.leaky_relu(x, 0.2)
            feats.append(x)
        return feats

    def compute_output_shape(self, input_shape):
        shapes = []
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
            shapes.append(shape)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(n_layers=self.n_layers, ndf=self.ndf)
        return config


@keras.saving.register_keras_serializable(package="clade_tf")
class MultiscaleDiscriminator(keras.Model):
    """`num_d` PatchGAN discriminators on successively average-pooled inputs.

    Input: `[N, H, W, semantic_channels + 3]` (one-hot label map, instance edges
    where used, and the RGB image). Output: a list (one per scale) of lists of
    feature maps (`n_layers` intermediate features + the prediction), for the
    hinge loss and feature matching.

    Args:
        config: a `DiscriminatorConfig` (or its dict form).

    Example:
    >>> d = MultiscaleDiscriminator(DiscriminatorConfig(ndf=8))
    >>> outs = d(tf.zeros([1, 64, 64, 7]))  # 2 scales x 5 feature maps
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = DiscriminatorConfig()
        elif isinstance(config, dict):
            config = DiscriminatorConfig(**config)
        self.config = config
        self.scales = [
            NLayerDiscriminator(config.n_layers, config.ndf, dtype=self.dtype_policy,
                                name=f"discriminator_{i}")
            for i in range(config.num_d)
        ]

    def build(self, input_shape):
        if self.built:
            return
        for d in self.scales:
            d.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        results = []
        for i, d in enumerate(self.scales):
            results.append(d(x, training=training))
            if i < len(self.scales) - 1:
                x = avg_pool_3x3_s2(x)
        return results

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict())
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
