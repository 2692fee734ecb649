"""Configuration dataclasses for the networks (one per concern)."""

import dataclasses

from clade_tf.layers.normalization import _KINDS as _NORM_KINDS
from clade_tf.layers.normalization import PARAM_FREE_NORMS
from clade_tf.layers.resblock import NORM_MODES

UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines the generator's architecture and weights.

    Attributes:
        num_classes: label classes the model accepts, don't-care included
            (ADE20K: 150 + 1 = 151).
        image_height, image_width: output size; both must be divisible by
            2**(number of upsamplings) (5 / 6 / 7 for normal / more / most).
        norm_mode: `clade`, `clade-icpe`, `spade` or `none` (plain affine norm;
            the unconditional backbone used to measure overhead).
        param_free_norm: `syncbatch`, `batch` or `instance` (`identity` only in
            folded inference generators, see `clade_tf.inference`).
        use_instance: the model takes an `instance` id map and uses its edges.
        num_upsampling_layers: `normal`, `more` or `most`.
        ngf: base width (64 official).
        use_vae: start from z (dim `z_dim`) through a Dense layer instead of the
            downsampled label map.
        z_dim: latent size in VAE mode.
        spade_hidden: SPADE's shared embedding width (128 official).
    """

    num_classes: int
    image_height: int = 256
    image_width: int = 256
    norm_mode: str = "clade"
    param_free_norm: str = "syncbatch"
    use_instance: bool = False
    num_upsampling_layers: str = "normal"
    ngf: int = 64
    use_vae: bool = False
    z_dim: int = 256
    spade_hidden: int = 128

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"GeneratorConfig: {msg}")

        if self.norm_mode not in NORM_MODES:
            fail(f"norm_mode={self.norm_mode!r}, expected one of {', '.join(NORM_MODES)}")
        if self.param_free_norm not in _NORM_KINDS:
            fail(
                f"param_free_norm={self.param_free_norm!r}, expected one of "
                f"{', '.join(PARAM_FREE_NORMS)}"
            )
        if self.num_upsampling_layers not in UPSAMPLING_LAYERS:
            fail(
                f"num_upsampling_layers={self.num_upsampling_layers!r}, expected one of "
                f"{', '.join(UPSAMPLING_LAYERS)}"
            )
        if self.num_classes < 1:
            fail(f"num_classes={self.num_classes}, expected >= 1")
        if self.ngf < 2 or self.ngf % 2:
            fail(f"ngf={self.ngf}, expected an even number >= 2")
        f = self.total_stride
        for name in ("image_height", "image_width"):
            v = getattr(self, name)
            if v < f or v % f:
                fail(
                    f"{name}={v} must be a positive multiple of {f} "
                    f"(2**{UPSAMPLING_LAYERS[self.num_upsampling_layers]} for "
                    f"num_upsampling_layers={self.num_upsampling_layers!r})"
                )

    @property
    def total_stride(self):
        return 2 ** UPSAMPLING_LAYERS[self.num_upsampling_layers]

    @property
    def latent_size(self):
        """(height, width) of the first feature map."""
        return self.image_height // self.total_stride, self.image_width // self.total_stride

    @property
    def input_names(self):
        """The inputs this generator takes, in contract order: `label`, then `instance`
        (use_instance), `dist` (clade-icpe), `z` (use_vae; sampled when absent). The one
        place that decides which inputs a model needs (data, GAN, export all ask here)."""
        names = ["label"]
        if self.use_instance:
            names.append("instance")
        if self.norm_mode == "clade-icpe":
            names.append("dist")
        if self.use_vae:
            names.append("z")
        return tuple(names)

    @property
    def data_keys(self):
        """The maps a data source must provide for this generator (`input_names`
        without `z`, which is drawn, not read)."""
        return tuple(n for n in self.input_names if n != "z")

    @property
    def semantic_channels(self):
        """Channels of the one-hot semantic map (+1 for the instance edge map)."""
        return self.num_classes + (1 if self.use_instance else 0)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"GeneratorConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Multiscale PatchGAN discriminator (official defaults).

    Attributes:
        num_d: number of scales.
        n_layers: conv layers per scale (before the final 1-channel conv).
        ndf: base width.
    """

    num_d: int = 2
    n_layers: int = 4
    ndf: int = 64

    def to_dict(self):
        return dataclasses.asdict(self)
