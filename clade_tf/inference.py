"""Inference-only generators: training-time parameterisation folded away.

`fold_for_inference(g)` returns a new generator that computes what `g(...,
training=False)` computes, with:

- spectral normalization folded into plain kernels (`kernel_orig / sigma` with the
  stored u, v), so no power-iteration state or sigma ops remain;
- for CLADE (and the `none` backbone) with batch-type norms, the BatchNorm moving
  statistics folded away, so each CLADE layer is one lookup and one multiply-add.
  With `s = sqrt(var + eps)`: `norm_1`, which reads `conv_0`'s output, folds them
  into that conv (`(conv(x) - mean) / s` is a conv with kernel `/ s` and bias
  `(b - mean) / s`) and keeps its tables; `norm_0` and `norm_s`, which read the
  residual stream, fold them into their tables: `norm(x) * gamma[l] + beta[l] =
  x * (gamma/s)[l] + (beta - mean * gamma/s)[l]`. Both are exact; folding into the
  conv also keeps that conv's output channels at unit scale, which per-tensor int8
  quantization needs (folded into the tables instead, channels with a small `s`
  were quantized to a few levels and then multiplied by a large `gamma/s`: the
  full-integer model's largest error);
- on request (`order_lookups`, or `set_graph`'s "ordered_lookups"), each CLADE lookup
  (and CLADE-ICPE's positional convs) made to depend on its layer's input: the label map
  plus an int 0 computed from one element of x (`x > inf` is false for every x, inf and
  NaN included). The same numbers; but TFLite runs the ops XNNPACK does not take (the
  GATHERs) as early as their inputs allow, so without it all lookups of the model ran
  before the first conv, with every gathered tensor alive at once. With it each lookup
  runs just before its layer (ADE20K fp32: runtime peak 964 -> 815 MB, same speed), at
  the price of an XNNPACK partition per layer: the exports no longer ask for it
  (`clade_tf.export.exporter.graph_options`);
- on request (`set_graph`, `GRAPH_OPTIONS`), the delegate-friendly forms of the phone
  formats: lookups with 1-D indices (`lookup`) and nearest x2 as DEPTH_TO_SPACE
  (`upsample2x_phone`), both exact;
- no label-range assertion (exported graphs take it as a contract);
- the one-hot label map as a lookup in an identity table (GATHER), not ONE_HOT: the
  same numbers, but TFLite's int8 ONE_HOT gets the off value wrong (a 7-class
  one-hot into a 1x1 conv came out up to 2.1 off, of a range of 2.3).

The folded generator is an `InferenceGenerator`: a `Generator` whose blocks are
`InferenceResnetBlock`s (plain convs; folded norms without a normalization layer),
so the core layers carry no inference-only switches.

CLADE-ICPE keeps its BatchNorm: the mean term is multiplied by `(1 + conv_g(dist))`
but the shift by `(1 + conv_b(dist))`, so it does not fold into beta. SPADE keeps
it too (its gamma is data-dependent). Instance norm has no statistics to fold.
"""

import keras
import numpy as np
import tensorflow as tf

from clade_tf.layers.normalization import (
    AffineNorm,
    ClassAdaptiveNorm,
    SpatiallyAdaptiveNorm,
)
from clade_tf.layers.resblock import ResnetBlock
from clade_tf.networks.generator import Generator


def folds_batch_norm(norm_mode, param_free_norm):
    """Whether the BatchNorm statistics fold into the modulation (see module doc)."""
    return norm_mode in ("clade", "none") and param_free_norm in ("batch", "syncbatch")


@keras.saving.register_keras_serializable(package="clade_tf")
class Unnormalized(keras.layers.Layer):
    """Stands in for the param-free norm whose statistics were folded into the modulation."""

    def call(self, x, training=None):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def after(t, x):
    """`t`, computed after `x`: plus a 0 that depends on one element of `x`.

    The 0 has `t`'s rank (all dims 1), sliced without dropping dims: the GPU delegate
    refuses an ADD with a 0-D input and a STRIDED_SLICE with `shrink_axis_mask`, which
    the scalar `x[0, 0, 0, 0]` was (LiteRT.js WebGPU: "bad input dims size: 0")."""
    first = tf.reshape(x[:1, :1, :1, :1], [1] * t.shape.rank)
    return t + tf.cast(tf.greater(first, np.inf), t.dtype)  # false for inf and NaN too


def lookup(table, index, flat):
    """`table[index]`: `[*index.shape, C]` rows of `table` `[K, C]`.

    `flat`: gathered with 1-D indices (`index` reshaped to `[-1]`, the result back to
    `[..., C]`): the only GATHER the GPU delegate takes (1-D int32 indices); the same
    numbers as the N-D gather."""
    if not flat:
        return tf.gather(table, index)
    shape = index.shape.as_list()
    if None in shape:
        shape = tf.concat([tf.shape(index), [table.shape[-1]]], axis=0)
    else:
        shape = shape + [table.shape[-1]]
    return tf.reshape(tf.gather(table, tf.reshape(index, [-1])), shape)


def upsample2x_phone(x):
    """Nearest x2 upsampling (`clade_tf.networks.generator.upsample2x`, bit-identical)
    as 4 copies of `x` on the channels and DEPTH_TO_SPACE: XNNPACK has no
    RESIZE_NEAREST_NEIGHBOR (the resize ran between its partitions); both ops are
    XNNPACK and GPU-delegate ops. DEPTH_TO_SPACE puts channel block `2i + j` at
    `(2h + i, 2w + j)`, and every block is `x`."""
    return tf.nn.depth_to_space(tf.concat([x, x, x, x], axis=-1), 2)


# Graph options of an export trace (`InferenceGenerator.set_graph`): the value of each
# key and what it means.
GRAPH_OPTIONS = {
    "lookups": ("nd", "flat-1d"),  # gather with [N,H,W] indices / 1-D indices (`lookup`)
    "upsample": ("resize", "depth-to-space"),  # RESIZE_NEAREST_NEIGHBOR / `upsample2x_phone`
    "ordered_lookups": (False, True),  # each lookup after its layer's input (module doc)
}
DEFAULT_GRAPH = {"lookups": "nd", "upsample": "resize", "ordered_lookups": False}


def check_graph(graph):
    """`graph` (a dict of `GRAPH_OPTIONS`) completed with `DEFAULT_GRAPH`; a one-line
    ValueError for an unknown key or value."""
    for key, value in graph.items():
        if key not in GRAPH_OPTIONS:
            raise ValueError(f"unknown graph option {key!r}; expected some of {', '.join(GRAPH_OPTIONS)}")
        if value not in GRAPH_OPTIONS[key]:
            raise ValueError(f"graph option {key}={value!r}; expected one of {GRAPH_OPTIONS[key]}")
    return {**DEFAULT_GRAPH, **graph}


@keras.saving.register_keras_serializable(package="clade_tf")
class InferenceClassAdaptiveNorm(ClassAdaptiveNorm):
    """CLADE whose lookup runs after its input is computed, when `after_input` (set by
    `InferenceGenerator.order_lookups`; see module doc)."""

    after_input = False
    flat_lookups = False  # `lookup(..., flat=True)`, set by `InferenceGenerator.set_graph`

    def class_rows(self, table, label):
        return lookup(table, label, self.flat_lookups)

    def modulate(self, x, cond, training=None):
        if not self.after_input:
            return super().modulate(x, cond, training=training)
        cond = dict(cond, label=after(cond["label"], x))
        if self.use_icpe:  # its positional convs too: full-size outputs, like the lookups
            cond["dist"] = after(cond["dist"], x)
        return super().modulate(x, cond, training=training)


@keras.saving.register_keras_serializable(package="clade_tf")
class FoldedClassAdaptiveNorm(InferenceClassAdaptiveNorm):
    """CLADE with its BatchNorm folded into the tables: `x * gamma[label] + beta[label]`."""

    def make_param_free_norm(self, kind):
        return Unnormalized(name="param_free_norm", dtype=self.dtype_policy)


@keras.saving.register_keras_serializable(package="clade_tf")
class FoldedAffineNorm(AffineNorm):
    """The `none` norm with its BatchNorm folded into the affine: `x * gamma + beta`."""

    def make_param_free_norm(self, kind):
        return Unnormalized(name="param_free_norm", dtype=self.dtype_policy)


@keras.saving.register_keras_serializable(package="clade_tf")
class InferenceResnetBlock(ResnetBlock):
    """A `ResnetBlock` without spectral normalization (folded into the kernels) and,
    where `folds_batch_norm`, with folded norms.

    `folded_clade_norm` is the class of its folded CLADE norms: a subclass computing
    the lookup differently (`benchmarks.variants`) plugs in here."""

    folded_clade_norm = FoldedClassAdaptiveNorm

    def __init__(self, *args, **kwargs):
        kwargs["spectral_norm"] = False
        super().__init__(*args, **kwargs)

    def make_norm(self, name):
        if not folds_batch_norm(self.norm_mode, self.param_free_norm):
            if self.norm_mode in ("clade", "clade-icpe"):
                return InferenceClassAdaptiveNorm(
                    self.num_classes, self.param_free_norm, use_instance_edge=self.use_instance_edge,
                    use_icpe=self.norm_mode == "clade-icpe", dtype=self.dtype_policy, name=name,
                )
            return super().make_norm(name)
        if self.norm_mode == "clade":
            return self.folded_clade_norm(
                self.num_classes, self.param_free_norm, use_instance_edge=self.use_instance_edge,
                dtype=self.dtype_policy, name=name,
            )
        return FoldedAffineNorm(self.param_free_norm, dtype=self.dtype_policy, name=name)


@keras.saving.register_keras_serializable(package="clade_tf")
class InferenceGenerator(Generator):
    """A `Generator` with the training-time parameterisation folded away and no
    label-range assertion. Its weights come from `fold_for_inference`.

    `block_class` is the class of its blocks (an `InferenceResnetBlock` subclass)."""

    block_class = InferenceResnetBlock

    def __init__(self, config, **kwargs):
        kwargs["check_labels"] = False
        super().__init__(config, **kwargs)

    graph = DEFAULT_GRAPH  # the graph options of the next trace (`set_graph`)

    def order_lookups(self, after_input):
        """Whether each CLADE lookup waits for its layer's input (read when traced). TFLite
        wants it (module doc); onnxruntime schedules by itself, and there the extra ops
        cost a little memory and time (`benchmarks/BENCHMARKS.md`, attempt 7)."""
        self.set_graph(dict(self.graph, ordered_lookups=bool(after_input)))

    def set_graph(self, graph):
        """How the next trace writes the lookups, the upsampling and the lookup order
        (`GRAPH_OPTIONS`; missing keys: `DEFAULT_GRAPH`). The same numbers every way; the
        phone formats want the delegate-friendly forms (`clade_tf.export.exporter.graph_options`)."""
        self.graph = check_graph(graph)
        for layer in self._flatten_layers():
            if isinstance(layer, InferenceClassAdaptiveNorm):
                layer.after_input = self.graph["ordered_lookups"]
                layer.flat_lookups = self.graph["lookups"] == "flat-1d"
        return self.graph

    def features(self, inputs, training=None):
        if self.graph["upsample"] == "resize":
            return super().features(inputs, training=training)
        # `Generator.features` with `upsample2x_phone` for the resize
        c = self.config
        levels = self.pyramid(inputs)
        if c.use_vae:
            z = inputs.get("z") if isinstance(inputs, dict) else None
            if z is None:
                z = tf.random.normal([tf.shape(inputs["label"])[0], c.z_dim])
            x = self.fc(tf.cast(z, self.compute_dtype))
            x = tf.transpose(tf.reshape(x, [-1, 16 * c.ngf, self.sh, self.sw]), [0, 2, 3, 1])
        else:
            x = self.fc(tf.cast(levels[c.total_stride]["segmap"], self.compute_dtype))
        prev = None
        for blk, s in self.block_strides():
            if prev is not None and s != prev:
                x = upsample2x_phone(x)
            x = blk(x, levels[s], training=training)
            prev = s
        return self.conv_img(tf.nn.leaky_relu(x, 0.2))

    @property
    def folds_batch_norm(self):
        return folds_batch_norm(self.config.norm_mode, self.config.param_free_norm)

    def segmap(self, cond):
        # a lookup in an identity table: the same numbers as tf.one_hot (module doc)
        k = self.config.num_classes
        eye = tf.constant(np.eye(k, dtype=np.float32))  # tf.eye: MATRIX_DIAG
        seg = lookup(eye, cond["label"], self.graph["lookups"] == "flat-1d")
        if "edge" in cond:
            seg = tf.concat([seg, cond["edge"]], axis=-1)
        return seg

    def make_block(self, fin, fout, name):
        c = self.config
        return self.block_class(
            fin, fout, norm_mode=c.norm_mode, num_classes=c.num_classes,
            param_free_norm=c.param_free_norm, use_instance_edge=c.use_instance,
            spade_hidden=c.spade_hidden, dtype=self.dtype_policy, name=name,
        )


def _bn_stats(norm):
    bn = norm.norm.bn
    mean = bn.moving_mean.numpy().astype(np.float64)
    scale = np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    return mean, scale


def _copy_conv(src, dst):
    dst.kernel.assign(src.effective_kernel(training=False).numpy())
    if src.bias is not None:
        dst.bias.assign(src.bias.numpy())


def _copy_bn(src, dst):
    if src.norm.bn is not None:
        dst.norm.bn.moving_mean.assign(src.norm.bn.moving_mean.numpy())
        dst.norm.bn.moving_variance.assign(src.norm.bn.moving_variance.numpy())


def _fold_affine(src, dst, fold):
    """Copies `gamma`, `beta` (a CLADE table or a per-channel affine); `fold`: "tables"
    folds the BatchNorm statistics into them, "conv" leaves them out (the preceding
    conv normalizes, `_fold_into_conv`), None copies them."""
    gamma, beta = src.gamma.numpy().astype(np.float64), src.beta.numpy().astype(np.float64)
    if fold == "tables":
        mean, scale = _bn_stats(src)
        gamma, beta = gamma / scale, beta - mean * gamma / scale
    elif fold is None:
        _copy_bn(src, dst)
    dst.gamma.assign(gamma.astype(np.float32))
    dst.beta.assign(beta.astype(np.float32))


def _fold_norm(src, dst, fold):
    if isinstance(src, ClassAdaptiveNorm):
        _fold_affine(src, dst, fold)
        if src.use_icpe:
            _copy_conv(src.dist_conv_gamma, dst.dist_conv_gamma)
            _copy_conv(src.dist_conv_beta, dst.dist_conv_beta)
        if src.use_instance_edge:
            _copy_conv(src.edge_conv, dst.edge_conv)
    elif isinstance(src, SpatiallyAdaptiveNorm):
        _copy_bn(src, dst)
        for name in ("mlp_shared", "mlp_gamma_conv", "mlp_beta_conv"):
            _copy_conv(getattr(src, name), getattr(dst, name))
    elif isinstance(src, AffineNorm):
        _fold_affine(src, dst, fold)
    else:
        raise TypeError(f"cannot fold {type(src).__name__}")


def _fold_into_conv(conv, src, dst):
    """Folds the BatchNorm statistics of `src` (a norm reading `conv`'s output) into
    `conv`; `dst`'s tables get what is left.

    Each output channel is divided by `a = max(s, s_median / 100)`, not by `s` alone: a
    near-dead channel (variance near zero) divided by its own tiny `s` would give the
    int8 conv a requantization scale XNNPACK refuses (>= 256). The tables then take
    the rest, `gamma * a / s` (1 for every ordinary channel).
    """
    mean, scale = _bn_stats(src)
    a = np.maximum(scale, np.median(scale) / 100)
    conv.kernel.assign((conv.kernel.numpy().astype(np.float64) / a).astype(np.float32))
    conv.bias.assign(((conv.bias.numpy().astype(np.float64) - mean) / a).astype(np.float32))
    dst.gamma.assign((src.gamma.numpy().astype(np.float64) * (a / scale)).astype(np.float32))
    dst.beta.assign(src.beta.numpy())


def fold_for_inference(generator: Generator, into=InferenceGenerator) -> InferenceGenerator:
    """A new `InferenceGenerator` equal to `generator` in inference (see module doc).

    `into`: the class built, `InferenceGenerator` or a subclass with the same weights."""
    generator.build()
    c = generator.config
    out = into(c, dtype=generator.dtype_policy, name=generator.name)
    out.build()
    fold_bn = out.folds_batch_norm
    if c.use_vae:
        out.fc.kernel.assign(generator.fc.kernel.numpy())
        out.fc.bias.assign(generator.fc.bias.numpy())
    else:
        _copy_conv(generator.fc, out.fc)
    for src, dst in zip(generator.blocks, out.blocks):
        for name in ("conv_0", "conv_1") + (("conv_s",) if src.learned_shortcut else ()):
            _copy_conv(getattr(src, name), getattr(dst, name))
        for name in ("norm_0", "norm_1") + (("norm_s",) if src.learned_shortcut else ()):
            into_conv = fold_bn and name == "norm_1"  # norm_1 reads conv_0's output
            _fold_norm(getattr(src, name), getattr(dst, name),
                       ("conv" if into_conv else "tables") if fold_bn else None)
            if into_conv:
                _fold_into_conv(dst.conv_0, src.norm_1, dst.norm_1)
    _copy_conv(generator.conv_img, out.conv_img)
    return out


def calibrate_batch_norm(generator, inputs):
    """Sets every BatchNorm's moving statistics to those of one batch (momentum 0 for one
    training-mode pass). Random-weight generators otherwise run inference with the
    initial statistics (0, 1), i.e. unnormalized, and their activations explode."""
    bns = [layer for layer in generator._flatten_layers() if layer.__class__.__name__ == "BatchNormalization"]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    generator({k: tf.constant(v) for k, v in inputs.items()}, training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m
