"""The generator's residual block (official `SPADEResnetBlock`), for every norm mode."""

import keras
import tensorflow as tf

from clade_tf.layers.conv import Conv2D
from clade_tf.layers.normalization import (
    AffineNorm,
    ClassAdaptiveNorm,
    SpatiallyAdaptiveNorm,
)

NORM_MODES = ("spade", "clade", "clade-icpe", "none")


def make_norm(norm_mode, num_classes, param_free_norm, use_instance_edge, spade_hidden, name,
              **kwargs):
    """One conditional normalization layer for `norm_mode` (`kwargs`: layer kwargs, e.g. dtype)."""
    if norm_mode in ("clade", "clade-icpe"):
        return ClassAdaptiveNorm(
            num_classes,
            param_free_norm,
            use_instance_edge=use_instance_edge,
            use_icpe=(norm_mode == "clade-icpe"),
            name=name,
            **kwargs,
        )
    if norm_mode == "spade":
        return SpatiallyAdaptiveNorm(param_free_norm, hidden=spade_hidden, name=name, **kwargs)
    if norm_mode == "none":
        return AffineNorm(param_free_norm, name=name, **kwargs)
    raise ValueError(f"norm mode {norm_mode!r} is not one of {', '.join(NORM_MODES)}")


@keras.saving.register_keras_serializable(package="clade_tf")
class ResnetBlock(keras.layers.Layer):
    """Residual block with conditional normalization, as the official generator's.

    Main path: norm_0 -> LeakyReLU(0.2) -> conv_0 (3x3, fin -> fmiddle) ->
    norm_1 -> LeakyReLU(0.2) -> conv_1 (3x3, fmiddle -> fout), with
    `fmiddle = min(fin, fout)`. Shortcut: identity when `fin == fout`, else
    norm_s -> conv_s (1x1, no bias) with no activation. All convs spectral-normalized.
    With instance-edge CLADE the norms output one extra channel, so the convs
    read `fin + 1` / `fmiddle + 1` channels, exactly as the official code.

    Args:
        fin: input channels.
        fout: output channels.
        norm_mode: `"clade"`, `"clade-icpe"`, `"spade"` or `"none"`.
        num_classes: label classes (don't-care included).
        param_free_norm: `"syncbatch"`, `"batch"` or `"instance"`.
        use_instance_edge: the semantic input carries an instance-edge channel.
        spade_hidden: SPADE's hidden width (128).
        spectral_norm: spectral-normalize the convs (official: yes).

    Call args:
        x: `[N, H, W, fin]` activations.
        cond: the label-pyramid level at x's resolution (see
            `clade_tf.layers.normalization`); every norm is called as `norm(x, cond)`.
    """

    def __init__(
        self,
        fin,
        fout,
        norm_mode="clade",
        num_classes=2,
        param_free_norm="syncbatch",
        use_instance_edge=False,
        spade_hidden=128,
        spectral_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.fin, self.fout = int(fin), int(fout)
        self.norm_mode = norm_mode
        self.num_classes = int(num_classes)
        self.param_free_norm = param_free_norm
        self.use_instance_edge = bool(use_instance_edge)
        self.spade_hidden = int(spade_hidden)
        self.spectral_norm = bool(spectral_norm)
        self.learned_shortcut = self.fin != self.fout
        self.fmiddle = min(self.fin, self.fout)

        self.norm_0 = self.make_norm("norm_0")
        self.conv_0 = self._conv(self.fmiddle, 3, "conv_0", padding=1)
        self.norm_1 = self.make_norm("norm_1")
        self.conv_1 = self._conv(self.fout, 3, "conv_1", padding=1)
        if self.learned_shortcut:
            self.norm_s = self.make_norm("norm_s")
            self.conv_s = self._conv(self.fout, 1, "conv_s", use_bias=False)

    def make_norm(self, name):
        """The conditional norm `name`. Inference blocks override this to build
        norms with their BatchNorm folded away (`clade_tf.inference`)."""
        return make_norm(
            self.norm_mode, self.num_classes, self.param_free_norm, self.use_instance_edge,
            self.spade_hidden, name, dtype=self.dtype_policy,
        )

    def _conv(self, filters, kernel_size, name, **kwargs):
        return Conv2D(filters, kernel_size, spectral_norm=self.spectral_norm,
                      dtype=self.dtype_policy, name=name, **kwargs)

    @property
    def extra_channels(self):
        clade = self.norm_mode in ("clade", "clade-icpe")
        return 1 if (clade and self.use_instance_edge) else 0

    def cond_shape(self, spatial):
        """Shapes of the conditioning maps at `spatial` = `(N, H, W)` that this block's
        norms read (what `Generator.pyramid` provides)."""
        spatial = tuple(spatial)
        shape = {"label": spatial}
        if self.use_instance_edge:
            shape["edge"] = spatial + (1,)
        if self.norm_mode == "clade-icpe":
            shape["dist"] = spatial + (2,)
        if self.norm_mode == "spade":
            shape["segmap"] = spatial + (self.num_classes + (1 if self.use_instance_edge else 0),)
        return shape

    def build(self, x_shape, cond_shape=None):
        spatial = tuple(x_shape[:-1])
        if cond_shape is None:
            cond_shape = self.cond_shape(spatial)
        extra = self.extra_channels
        self.norm_0.build(spatial + (self.fin,), cond_shape)
        self.conv_0.build(spatial + (self.fin + extra,))
        self.norm_1.build(spatial + (self.fmiddle,), cond_shape)
        self.conv_1.build(spatial + (self.fmiddle + extra,))
        if self.learned_shortcut:
            self.norm_s.build(spatial + (self.fin,), cond_shape)
            self.conv_s.build(spatial + (self.fin + extra,))

    def call(self, x, cond, training=None):
        if self.learned_shortcut:
            x_s = self.conv_s(self.norm_s(x, cond, training=training), training=training)
        else:
            x_s = x
        dx = self.conv_0(tf.nn.leaky_relu(self.norm_0(x, cond, training=training), 0.2),
                         training=training)
        dx = self.conv_1(tf.nn.leaky_relu(self.norm_1(dx, cond, training=training), 0.2),
                         training=training)
        return x_s + dx

    def norm_layers(self):
        return [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])

    def compute_output_shape(self, x_shape, cond_shape=None):
        return tuple(x_shape[:-1]) + (self.fout,)

    def get_config(self):
        config = super().get_config()
        config.update(
            fin=self.fin,
            fout=self.fout,
            norm_mode=self.norm_mode,
            num_classes=self.num_classes,
            param_free_norm=self.param_free_norm,
            use_instance_edge=self.use_instance_edge,
            spade_hidden=self.spade_hidden,
            spectral_norm=self.spectral_norm,
        )
        return config
