"""Configuration dataclasses, one per concern, and the run configuration that nests them.

`RunConfig` = data + generator + discriminator + optimisation + monitoring (+ the
seed): everything a training run needs, round-tripping through a run directory's
`config.json` (`to_dict` / `from_dict`). Where to write the run and on which
devices are not part of it (they may change between a run and its resume).
"""

import dataclasses

from clade_tf.layers.normalization import PARAM_FREE_NORMS
from clade_tf.layers.resblock import NORM_MODES

UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}
PROCEDURAL_DATASETS = ("synthetic", "synthetic-scenes")
DATASETS = ("synthetic", "synthetic-scenes", "ade20k", "ade20k-outdoor", "cityscapes", "coco-stuff", "custom")
PREPROCESS_MODES = ("resize_and_crop", "fixed")
MIXED_PRECISION = {None: "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


class ConfigError(ValueError):
    """A configuration that cannot work (the message names the value and what was expected)."""


def _from_dict(cls, d, where):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return cls(**d)


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
        param_free_norm: `syncbatch`, `batch` or `instance`.
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
            raise ConfigError(f"GeneratorConfig: {msg}")

        if self.norm_mode not in NORM_MODES:
            fail(f"norm_mode={self.norm_mode!r}, expected one of {', '.join(NORM_MODES)}")
        if self.param_free_norm not in PARAM_FREE_NORMS:
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
        return _from_dict(cls, d, "GeneratorConfig")


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

    @classmethod
    def from_dict(cls, d):
        return _from_dict(cls, d, "DiscriminatorConfig")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training images come from and how they are prepared (the official
    dataset options; the crop size is the generator's image size).

    Attributes:
        dataset: folder layout / preset name (`DATASETS`).
        dataroot: dataset folder (unused for `synthetic`).
        label_nc: semantic classes without the don't-care class.
        contain_dontcare: the label maps have a don't-care class (class `label_nc`).
        use_instance: the dataset has instance maps.
        preprocess: `resize_and_crop` (to `load_size`, then a random crop) or `fixed`.
        load_size: resize size before the random crop.
        palette: colour -> class file for custom RGB label masks.
        skip_bad_samples: report and skip bad samples instead of stopping.
        synthetic_length: samples per epoch of the synthetic dataset.
        cache: a prepared cache of the training split (`python -m train.prepare`), read
            instead of the image files (may change on resume).
    """

    dataset: str = "synthetic"
    dataroot: str | None = None
    label_nc: int = 6
    contain_dontcare: bool = False
    use_instance: bool = True
    preprocess: str = "fixed"
    load_size: int = 64
    palette: str | None = None
    skip_bad_samples: bool = False
    synthetic_length: int = 1024
    cache: str | None = None

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        if self.preprocess not in PREPROCESS_MODES:
            raise ConfigError(f"preprocess {self.preprocess!r}: expected one of {', '.join(PREPROCESS_MODES)}")
        for name in ("label_nc", "load_size", "synthetic_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 1")

    @property
    def procedural(self):
        """The dataset is generated in memory (no `dataroot`)."""
        return self.dataset in PROCEDURAL_DATASETS

    @property
    def num_classes(self):
        """Classes the model sees, don't-care included."""
        return self.label_nc + (1 if self.contain_dontcare else 0)

    @property
    def dontcare_class(self):
        """The don't-care class id (the last class, `label_nc`), or None when the data has none.

        The one place it is derived: the data loaders map raw don't-care pixels to it,
        CLADE-ICPE's positional maps leave it at zero (training, export, the web page),
        and the evaluation's segmentation scores ignore it."""
        return self.label_nc if self.contain_dontcare else None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return _from_dict(cls, d, "DataConfig")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """How the GAN is optimised (official defaults: TTUR Adam, hinge loss, lambdas 10/10/0.05).

    Attributes:
        batch_size: global batch size.
        steps: total optimizer steps of the run (resume continues to this total).
        g_lr, d_lr, beta1, beta2: Adam settings of the generator / discriminator.
        decay_start: step from which both learning rates decay linearly to 0 at
            `steps` (None: no decay).
        lambda_feat, lambda_vgg, lambda_kld: loss weights.
        vgg_weights: local VGG19 (notop) Keras weights file; None disables the VGG loss.
        mixed_precision: None (float32), `float16` (`mixed_float16` with loss
            scaling: GPUs) or `bfloat16` (`mixed_bfloat16`: TPUs, CPUs with AVX512-BF16).
        jit_compile: compile the train step with XLA (may change on resume).
    """

    batch_size: int = 8
    steps: int = 800
    g_lr: float = 1e-4
    d_lr: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    decay_start: int | None = None
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kld: float = 0.05
    vgg_weights: str | None = None
    mixed_precision: str | None = None
    jit_compile: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: expected >= 1")
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: expected >= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: expected None, 'float16' or 'bfloat16'")

    @property
    def dtype_policy(self):
        """The Keras dtype policy name of the networks."""
        return MIXED_PRECISION[self.mixed_precision]

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return _from_dict(cls, d, "OptimConfig")


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """What a run records, in steps: TensorBoard scalars, sample grids, checkpoints."""

    log_every: int = 20
    image_every: int = 100
    checkpoint_every: int = 200

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"{f.name}={getattr(self, f.name)}: expected >= 1")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return _from_dict(cls, d, "MonitorConfig")


SEGMENTER_RANGES = ("0,1", "-1,1", "0,255")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How generated images are scored (`clade_tf.evaluation`): FID / KID on the FID
    Inception's features, mIoU / pixel accuracy with a segmenter. During training every
    `every` steps (0: never) on the first `images` samples of the `split`.

    Attributes:
        inception_weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (local file).
        real_stats: `.npz` with `mu`, `sigma` of the real images; None: computed from the
            training split, resized to the generator's size (then KID is available too).
        real_images: training images used for the real statistics when they are computed.
        segmenter: an exported segmenter (SavedModel / .onnx / .tflite; image in, per-class
            scores `[N, H, W, C]` out); None: no mIoU.
        segmenter_size: `(height, width)` its input takes (None: the generator's size).
        segmenter_range: the pixel range it expects: "0,1", "-1,1" or "0,255".
        class_map: JSON file, the dataset class of each segmenter class (list; -1: ignored).
    """

    every: int = 0
    images: int = 500
    split: str = "val"
    inception_weights: str | None = None
    real_stats: str | None = None
    real_images: int = 2000
    segmenter: str | None = None
    segmenter_size: tuple | None = None
    segmenter_range: str = "0,1"
    class_map: str | None = None
    batch_size: int = 8

    def __post_init__(self):
        if self.every < 0:
            raise ConfigError(f"eval every={self.every}: expected >= 0 (0: off)")
        for name in ("images", "real_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval {name}={getattr(self, name)}: expected >= 1")
        if self.split not in ("train", "val"):
            raise ConfigError(f"eval split {self.split!r}: expected 'train' or 'val'")
        if self.segmenter_range not in SEGMENTER_RANGES:
            raise ConfigError(f"segmenter range {self.segmenter_range!r}: expected one of {', '.join(SEGMENTER_RANGES)}")
        if self.segmenter_size is not None:
            object.__setattr__(self, "segmenter_size", tuple(int(v) for v in self.segmenter_size))

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return _from_dict(cls, d, "EvalConfig")


# Data fields a continued run must keep (the others, e.g. where the data lives, may change).
_DATA_FIXED_ON_RESUME = ("dataset", "label_nc", "contain_dontcare", "use_instance", "preprocess",
                         "load_size", "synthetic_length")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; stored as the run directory's `config.json`.

    The generator configuration is the model (which inputs it takes, its size and
    classes); the data configuration says how to read data that fits it.
    """

    data: DataConfig
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    optim: OptimConfig = OptimConfig()
    monitor: MonitorConfig = MonitorConfig()
    seed: int = 0
    evaluation: EvalConfig = EvalConfig()

    def __post_init__(self):
        g, d = self.generator, self.data
        if g.num_classes != d.num_classes:
            dontcare = " + don't-care" if d.contain_dontcare else ""
            raise ConfigError(f"the generator has {g.num_classes} classes, the data {d.num_classes} "
                              f"(label_nc {d.label_nc}{dontcare})")
        if g.use_instance and not d.use_instance:
            raise ConfigError(f"the generator uses instance maps, the {d.dataset} data has none")

    @property
    def uses_encoder(self):
        return self.generator.use_vae

    def to_dict(self):
        return {"data": self.data.to_dict(), "generator": self.generator.to_dict(),
                "discriminator": self.discriminator.to_dict(), "optim": self.optim.to_dict(),
                "monitor": self.monitor.to_dict(), "seed": self.seed, "evaluation": self.evaluation.to_dict()}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigError(f"RunConfig: expected an object, got {type(d).__name__}")
        if "train" in d and "data" not in d:
            d = _legacy_record(d)
        unknown = set(d) - {"data", "generator", "discriminator", "optim", "monitor", "seed", "evaluation"}
        if unknown:
            raise ConfigError(f"RunConfig: unknown keys {sorted(unknown)}")
        missing = [k for k in ("data", "generator") if k not in d]
        if missing:
            raise ConfigError(f"RunConfig: missing {', '.join(missing)}")
        return cls(data=DataConfig.from_dict(d["data"]), generator=GeneratorConfig.from_dict(d["generator"]),
                   discriminator=DiscriminatorConfig.from_dict(d.get("discriminator", {})),
                   optim=OptimConfig.from_dict(d.get("optim", {})),
                   monitor=MonitorConfig.from_dict(d.get("monitor", {})), seed=int(d.get("seed", 0)),
                   evaluation=EvalConfig.from_dict(d.get("evaluation", {})))

    def resume_differences(self, old):
        """What differs from `old` (the run being continued) that a resume cannot change."""
        diffs = []
        for name in ("generator", "discriminator"):
            if getattr(old, name) != getattr(self, name):
                a, b = getattr(old, name).to_dict(), getattr(self, name).to_dict()
                changed = [f"{k} ({a[k]!r} -> {b[k]!r})" for k in a if a[k] != b.get(k)]
                diffs.append(f"{name} architecture: {', '.join(changed)}")
        for k in _DATA_FIXED_ON_RESUME:
            a, b = getattr(old.data, k), getattr(self.data, k)
            if a != b:
                diffs.append(f"{k} ({a!r} -> {b!r})")
        for k in ("batch_size", "mixed_precision"):
            a, b = getattr(old.optim, k), getattr(self.optim, k)
            if a != b:
                diffs.append(f"{k} ({a!r} -> {b!r})")
        if old.seed != self.seed:
            diffs.append(f"seed ({old.seed!r} -> {self.seed!r})")
        return diffs


def _legacy_record(record):
    """A `config.json` of the earlier flat layout (`preset` + `train` sections) in today's layout."""
    t, p = record["train"], record.get("preset", {})
    data = {"dataset": t.get("dataset", "synthetic"), "dataroot": t.get("dataroot"),
            "label_nc": p.get("label_nc", 6), "contain_dontcare": p.get("contain_dontcare", False),
            "use_instance": p.get("use_instance", True), "preprocess": p.get("preprocess", "fixed"),
            "load_size": p.get("load_size", 64), "palette": t.get("palette"),
            "skip_bad_samples": t.get("skip_bad_samples", False),
            "synthetic_length": t.get("synthetic_length", 1024)}
    optim = {k: t[k] for k in ("batch_size", "steps", "g_lr", "d_lr", "beta1", "beta2", "decay_start",
                                "lambda_feat", "lambda_vgg", "lambda_kld", "vgg_weights") if k in t}
    monitor = {k: t[k] for k in ("log_every", "image_every", "checkpoint_every") if k in t}
    return {"data": data, "generator": record["generator"], "discriminator": record.get("discriminator", {}),
            "optim": optim, "monitor": monitor, "seed": t.get("seed", 0)}
