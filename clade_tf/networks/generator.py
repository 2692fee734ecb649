"""The CLADE / CLADE-ICPE / SPADE generator (official `SPADEGenerator`)."""

import keras
import tensorflow as tf

from clade_tf.config import UPSAMPLING_LAYERS, GeneratorConfig
from clade_tf.layers.conv import Conv2D
from clade_tf.layers.init import xavier_normal
from clade_tf.layers.ops import check_labels, downsample_nearest, instance_edges
from clade_tf.layers.resblock import ResnetBlock


def upsample2x(x):
    """Nearest x2 upsampling (PyTorch `nn.Upsample(scale_factor=2)`: source = floor(dst / 2)).

    Written as the asymmetric nearest resize (`half_pixel_centers=False`), which gives
    the same pixels for an integer factor and exports to ONNX as a standard Resize
    (asymmetric / floor) instead of the deprecated `tf_half_pixel_for_nn` mode.
    """
    h, w = x.shape[1], x.shape[2]
    size = [h * 2, w * 2] if (h is not None and w is not None) else tf.shape(x)[1:3] * 2
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False,
                                            half_pixel_centers=False)


@tf.custom_gradient
def upsample2x_trainable(x):
    """`upsample2x` whose gradient is a 2x2 sum (what `ResizeNearestNeighborGrad` computes),
    written with a reshape so that XLA can compile it (`--jit-compile`): XLA has no kernel
    for `ResizeNearestNeighborGrad`. Training only; inference keeps the plain op, which
    is what the exports contain."""
    def grad(dy):
        s = tf.shape(dy)
        return tf.reduce_sum(tf.reshape(dy, [s[0], s[1] // 2, 2, s[2] // 2, 2, s[3]]), axis=[2, 4])

    return upsample2x(x), grad


@keras.saving.register_keras_serializable(package="clade_tf")
class Generator(keras.Model):
    """Semantic image synthesis generator with CLADE, CLADE-ICPE, SPADE or plain norms.

    Architecture (official): an input stage at 1/2**n resolution — the label map
    downsampled to the latent size then a 3x3 conv (`fc`), or in VAE mode a Dense
    layer from `z` — followed by residual blocks `head_0`, `G_middle_0`,
    `G_middle_1`, `up_0` ... `up_3` (and `up_4` for `most`) with nearest x2
    upsampling between them, then LeakyReLU(0.2) -> 3x3 conv -> tanh.

    Inputs: a dict with
        `label`: int32 `[N, H, W]` class ids in `[0, num_classes)`.
        `instance`: int32 `[N, H, W]` instance ids (when `use_instance`); the
            edge map is computed inside the model.
        `dist`: float32 `[N, H, W, 2]` intra-class positional map (CLADE-ICPE).
        `z`: float32 `[N, z_dim]` (VAE mode; sampled from N(0, I) when absent).

    The label pyramid (nearest downsampling by strided slicing) is computed once
    per forward pass; one-hot maps are only built where a layer needs them (the
    first conv, and SPADE's norms).

    Args:
        config: a `GeneratorConfig` (or its dict form).
        check_labels: raise on labels outside `[0, num_classes)` (a graph
            assertion; profiling and folded inference generators turn it off).

    Example:
    >>> from clade_tf import GeneratorConfig, Generator
    >>> g = Generator(GeneratorConfig(num_classes=4, image_height=64, image_width=64, ngf=8,
    ...                               param_free_norm="instance"))
    >>> img = g({"label": tf.zeros([1, 64, 64], tf.int32)})  # [1, 64, 64, 3] in [-1, 1]
    """

    def __init__(self, config, check_labels=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = GeneratorConfig.from_dict(config)
        self.config = config
        self.check_labels = bool(check_labels)
        c = config
        nf = c.ngf
        self.sh, self.sw = c.latent_size
        if c.use_vae:
            self.fc = keras.layers.Dense(
                16 * nf * self.sh * self.sw, kernel_initializer=xavier_normal(),
                dtype=self.dtype_policy, name="fc",
            )
        else:
            self.fc = Conv2D(16 * nf, 3, padding=1, dtype=self.dtype_policy, name="fc")
        specs = [
            ("head_0", 16, 16), ("G_middle_0", 16, 16), ("G_middle_1", 16, 16),
            ("up_0", 16, 8), ("up_1", 8, 4), ("up_2", 4, 2), ("up_3", 2, 1),
        ]
        self.blocks = [self.make_block(fin * nf, fout * nf, name) for name, fin, fout in specs]
        final_nc = nf
        if c.num_upsampling_layers == "most":
            self.blocks.append(self.make_block(nf, nf // 2, "up_4"))
            final_nc = nf // 2
        self.final_nc = final_nc
        self.conv_img = Conv2D(3, 3, padding=1, dtype=self.dtype_policy, name="conv_img")

    def make_block(self, fin, fout, name):
        """One residual block. Inference generators override this to build blocks
        without the training-time parameterisation (`clade_tf.inference`)."""
        c = self.config
        return ResnetBlock(
            fin, fout, norm_mode=c.norm_mode, num_classes=c.num_classes,
            param_free_norm=c.param_free_norm, use_instance_edge=c.use_instance,
            spade_hidden=c.spade_hidden, dtype=self.dtype_policy, name=name,
        )

    # -- structure -------------------------------------------------------------------
    def block_strides(self):
        """`[(block, stride)]`: each block with its input's downsampling factor."""
        n = UPSAMPLING_LAYERS[self.config.num_upsampling_layers]
        s = 2**n
        out = [(self.blocks[0], s)]  # head_0 at the latent size
        s //= 2
        out.append((self.blocks[1], s))  # G_middle_0
        if n >= 6:
            s //= 2
        out.append((self.blocks[2], s))  # G_middle_1
        for blk in self.blocks[3:]:
            s //= 2
            out.append((blk, s))
        assert s == 1, s
        return out

    def build(self, input_shape=None):
        if self.built:
            return
        c = self.config
        H, W = c.image_height, c.image_width
        if c.use_vae:
            self.fc.build((None, c.z_dim))
        else:
            self.fc.build((None, self.sh, self.sw, c.semantic_channels))
        for blk, s in self.block_strides():
            blk.build((None, H // s, W // s, blk.fin))
        self.conv_img.build((None, H, W, self.final_nc))
        self.built = True

    # -- forward ---------------------------------------------------------------------
    def _input(self, inputs, key, needed_for):
        if not isinstance(inputs, dict):
            raise TypeError(
                f"Generator inputs must be a dict with 'label' (and {needed_for} keys); "
                f"got {type(inputs).__name__}"
            )
        if key not in inputs or inputs[key] is None:
            raise ValueError(f"Generator ({needed_for}) needs inputs[{key!r}]")
        return inputs[key]

    def pyramid(self, inputs):
        """Conditioning maps at every stride the network uses: `{stride: cond}`."""
        c = self.config
        label = tf.cast(self._input(inputs, "label", "every mode"), tf.int32)
        if label.shape.rank != 3:
            raise ValueError(f"inputs['label'] must be [N, H, W] int32, got shape {label.shape}")
        if self.check_labels:
            label = check_labels(label, c.num_classes)
        edge = None
        if c.use_instance:
            edge = instance_edges(self._input(inputs, "instance", "use_instance=True"))
        dist = None
        if c.norm_mode == "clade-icpe":
            dist = tf.cast(self._input(inputs, "dist", "norm_mode='clade-icpe'"), tf.float32)
        strides = {s for _, s in self.block_strides()}
        if not c.use_vae:
            strides.add(c.total_stride)
        levels = {}
        for s in sorted(strides):
            cond = {"label": downsample_nearest(label, s)}
            if edge is not None:
                cond["edge"] = downsample_nearest(edge, s)
            if dist is not None:
                cond["dist"] = downsample_nearest(dist, s)
            if c.norm_mode == "spade" or (s == c.total_stride and not c.use_vae):
                cond["segmap"] = self.segmap(cond)
            levels[s] = cond
        return levels

    def segmap(self, cond):
        """One-hot label map (+ instance edge channel) as the official `input_semantics`."""
        seg = tf.one_hot(cond["label"], self.config.num_classes, dtype=tf.float32)
        if "edge" in cond:
            seg = tf.concat([seg, cond["edge"]], axis=-1)
        return seg

    def features(self, inputs, training=None):
        """Forward pass up to the final conv, before the tanh."""
        c = self.config
        levels = self.pyramid(inputs)
        if c.use_vae:
            z = inputs.get("z") if isinstance(inputs, dict) else None
            if z is None:
                n = tf.shape(inputs["label"])[0]
                z = tf.random.normal([n, c.z_dim])
            x = self.fc(tf.cast(z, self.compute_dtype))
            # PyTorch views the Dense output as [N, C, H, W]; keep its layout so
            # official weights import unchanged, then go to NHWC.
            x = tf.reshape(x, [-1, 16 * c.ngf, self.sh, self.sw])
            x = tf.transpose(x, [0, 2, 3, 1])
        else:
            x = self.fc(tf.cast(levels[c.total_stride]["segmap"], self.compute_dtype))
        prev = None
        for blk, s in self.block_strides():
            if prev is not None and s != prev:
                x = upsample2x_trainable(x) if training else upsample2x(x)
            x = blk(x, levels[s], training=training)
            prev = s
        return self.conv_img(tf.nn.leaky_relu(x, 0.2))

    def call(self, inputs, training=None):
        return tf.tanh(self.features(inputs, training=training))

    def norm_layers(self):
        """`[(norm_layer, input_shape)]` for every conditional norm (batch of 1)."""
        c = self.config
        out = []
        for blk, s in self.block_strides():
            h, w = c.image_height // s, c.image_width // s
            out.append((blk.norm_0, (1, h, w, blk.fin)))
            out.append((blk.norm_1, (1, h, w, blk.fmiddle)))
            if blk.learned_shortcut:
                out.append((blk.norm_s, (1, h, w, blk.fin)))
        return out

    def input_signature(self, batch_size=None):
        """`tf.TensorSpec`s of the inputs this configuration needs (no `z`)."""
        c = self.config
        H, W = c.image_height, c.image_width
        spec = {"label": tf.TensorSpec([batch_size, H, W], tf.int32, name="label")}
        if c.use_instance:
            spec["instance"] = tf.TensorSpec([batch_size, H, W], tf.int32, name="instance")
        if c.norm_mode == "clade-icpe":
            spec["dist"] = tf.TensorSpec([batch_size, H, W, 2], tf.float32, name="dist")
        if c.use_vae:
            spec["z"] = tf.TensorSpec([batch_size, c.z_dim], tf.float32, name="z")
        return spec

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict(), check_labels=self.check_labels)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Saved by earlier versions; only spectral generators were saved.
        if not config.pop("spectral_norm", True):
            raise ValueError("a folded generator (spectral_norm=False) cannot be loaded as a "
                             "Generator; save the original and call fold_for_inference")
        return cls(**config)
