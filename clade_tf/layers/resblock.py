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


def make_norm(norm_mode, num_classes, param_free_norm, use_instance_edge, spade_hidden, name):
    """One conditional normalization layer for `norm_mode`."""
    if norm_mode in ("clade", "clade-icpe"):
        return ClassAdaptiveNorm(
            num_classes,
            param_free_norm,
            use_instance_edge=use_instance_edge,
            use_icpe=(norm_mode == "clade-icpe"),
            name=name,
        )
    if norm_mode == "spade":
        return SpatiallyAdaptiveNorm(param_free_norm, hidden=spade_hidden, name=name)
    if norm_mode == "none":
        return AffineNorm(param_free_norm, name=name)
    raise ValueError(f"norm mode {norm_mode!r} is not one of {', '.join(NORM_MODES)}")


def apply_norm(norm, x, cond, training):
    """Calls `norm` with what it needs from `cond` (the label pyramid level at x's resolution).

    `cond` holds `label` (int32 [N,H,W]), and where present `edge` ([N,H,W,1]),
    `dist` ([N,H,W,2]) and `segmap` (one-hot + edge, for SPADE).
    """
    if isinstance(norm, ClassAdaptiveNorm):
        return norm(x, cond["label"], edge=cond.get("edge"), dist=cond.get("dist"), training=training)
    if isinstance(norm, SpatiallyAdaptiveNorm):
        return norm(x, cond["segmap"], training=training)
    return norm(x, training=training)


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

        def norm(name):
            return make_norm(
                norm_mode, self.num_classes, param_free_norm, self.use_instance_edge,
                self.spade_hidden, name,
            )

        self.norm_0 = norm("norm_0")
        self.conv_0 = Conv2D(self.fmiddle, 3, padding=1, spectral_norm=spectral_norm, name="conv_0")
        self.norm_1 = norm("norm_1")
        self.conv_1 = Conv2D(self.fout, 3, padding=1, spectral_norm=spectral_norm, name="conv_1")
        if self.learned_shortcut:
            self.norm_s = norm("norm_s")
            self.conv_s = Conv2D(
                self.fout, 1, use_bias=False, spectral_norm=spectral_norm, name="conv_s"
            )

    @property
    def extra_channels(self):
        clade = self.norm_mode in ("clade", "clade-icpe")
        return 1 if (clade and self.use_instance_edge) else 0

    def _build_norm(self, norm, channels, spatial):
        shape = spatial + (channels,)
        if isinstance(norm, SpatiallyAdaptiveNorm):
            seg_channels = self.num_classes + (1 if self.use_instance_edge else 0)
            norm.build(shape, spatial + (seg_channels,))
        else:
            norm.build(shape)

    def build(self, x_shape, cond_shape=None):
        spatial = tuple(x_shape[:-1])
        extra = self.extra_channels
        self._build_norm(self.norm_0, self.fin, spatial)
        self.conv_0.build(spatial + (self.fin + extra,))
        self._build_norm(self.norm_1, self.fmiddle, spatial)
        self.conv_1.build(spatial + (self.fmiddle + extra,))
        if self.learned_shortcut:
            self._build_norm(self.norm_s, self.fin, spatial)
            self.conv_s.build(spatial + (self.fin + extra,))

    def call(self, x, cond, training=None):
        if self.learned_shortcut:
            x_s = self.conv_s(apply_norm(self.norm_s, x, cond, training), training=training)
        else:
            x_s = x
        dx = self.conv_0(
            tf.nn.leaky_relu(apply_norm(self.norm_0, x, cond, training), 0.2), training=training
        )
        dx = self.conv_1(
            tf.nn.leaky_relu(apply_norm(self.norm_1, dx, cond, training), 0.2), training=training
        )
        return x_s + dx

    def norm_layers(self):
        return [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])

    def compute_output_shape(self, input_shape, cond_shape=None):
        return tuple(input_shape[:-1]) + (self.fout,)

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
