"""Dataset presets: the official per-dataset settings, one frozen dataclass instance each."""

import dataclasses

from clade_tf.config import (
    ConfigError,
    DataConfig,
    DiscriminatorConfig,
    EvalConfig,
    GeneratorConfig,
    MonitorConfig,
    OptimConfig,
    RunConfig,
)


@dataclasses.dataclass(frozen=True)
class Preset:
    """Per-dataset settings (the official `*_dataset.py` defaults).

    Attributes:
        name: preset name.
        label_nc: semantic classes *without* the don't-care class.
        contain_dontcare: the label maps have a don't-care class, which the model
            sees as class `label_nc` (so `num_classes = label_nc + 1`).
        use_instance: the dataset has instance maps; the model uses their edges.
        image_height, image_width: training crop (model input/output size).
        load_size: resize size before the random crop (`resize_and_crop`).
        preprocess: `resize_and_crop` or `fixed` (resize straight to the crop size).
        num_upsampling_layers: `normal` / `more` / `most`.
        ngf: generator base width.
        ndf: discriminator base width.
        batch_size: default training batch size.
    """

    name: str
    label_nc: int
    contain_dontcare: bool
    use_instance: bool
    image_height: int
    image_width: int
    load_size: int
    preprocess: str = "resize_and_crop"
    num_upsampling_layers: str = "normal"
    ngf: int = 64
    ndf: int = 64
    batch_size: int = 1

    @property
    def num_classes(self):
        return self.label_nc + (1 if self.contain_dontcare else 0)

    def generator_config(self, norm_mode="clade", **overrides):
        """The `GeneratorConfig` for this preset; keyword overrides win."""
        kwargs = dict(
            num_classes=self.num_classes,
            image_height=self.image_height,
            image_width=self.image_width,
            norm_mode=norm_mode,
            use_instance=self.use_instance,
            num_upsampling_layers=self.num_upsampling_layers,
            ngf=self.ngf,
        )
        kwargs.update(overrides)
        return GeneratorConfig(**kwargs)

    def discriminator_config(self):
        return DiscriminatorConfig(ndf=self.ndf)

    def data_config(self, **overrides):
        """The `DataConfig` of this preset's dataset; keyword overrides win (e.g. `dataroot`)."""
        kwargs = dict(dataset=self.name, label_nc=self.label_nc, contain_dontcare=self.contain_dontcare,
                      use_instance=self.use_instance, preprocess=self.preprocess, load_size=self.load_size)
        kwargs.update(overrides)
        return DataConfig(**kwargs)

    def run_config(self, norm_mode="clade", *, dataroot=None, use_vae=False, param_free_norm="syncbatch",
                   optim=None, monitor=None, seed=0, data=None, evaluation=None):
        """The `RunConfig` that `python -m train --dataset NAME` builds: this preset's data,
        generator (`norm_mode`, VAE input, param-free norm), discriminator, and `optim` /
        `monitor` (default: the official settings at the preset's batch size)."""
        return RunConfig(
            data=self.data_config(**{"dataroot": dataroot, **(data or {})}),
            generator=self.generator_config(norm_mode, use_vae=use_vae, param_free_norm=param_free_norm),
            discriminator=self.discriminator_config(),
            optim=optim or OptimConfig(batch_size=self.batch_size),
            monitor=monitor or MonitorConfig(), seed=seed, evaluation=evaluation or EvalConfig())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


ADE20K = Preset("ade20k", 150, True, False, 256, 256, 286)
ADE20K_OUTDOOR = Preset("ade20k-outdoor", 150, True, False, 256, 256, 286)
CITYSCAPES = Preset(
    "cityscapes", 35, False, True, 256, 512, 512, preprocess="fixed", num_upsampling_layers="more"
)
COCO_STUFF = Preset("coco-stuff", 182, True, True, 256, 256, 286)
# Custom folders: the official default of 13 classes; `--label-nc` overrides it.
CUSTOM = Preset("custom", 13, False, False, 256, 256, 286)
# The embedded procedural dataset: small enough to train in minutes on a CPU.
SYNTHETIC = Preset(
    "synthetic", 6, False, True, 64, 64, 64, preprocess="fixed", ngf=16, ndf=32, batch_size=8
)
# The harder procedural dataset (`clade_tf.data.scenes`), on which the norm modes differ.
SYNTHETIC_SCENES = SYNTHETIC.replace(name="synthetic-scenes", label_nc=14)

PRESETS = {p.name: p for p in (ADE20K, ADE20K_OUTDOOR, CITYSCAPES, COCO_STUFF, CUSTOM, SYNTHETIC, SYNTHETIC_SCENES)}


def get_preset(name):
    """Looks a preset up by name, with a clear error for unknown names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}"
        ) from None


def custom_preset(label_nc, contain_dontcare=False, use_instance=False):
    """The `custom` preset for a folder dataset of `label_nc` classes (the official
    `--label_nc`), plus a don't-care class and instance maps where it has them."""
    return get_preset("custom").replace(label_nc=label_nc, contain_dontcare=contain_dontcare,
                                        use_instance=use_instance)


def resolve_preset(dataset, label_nc=None, contain_dontcare=False, use_instance=False):
    """The preset of `dataset`; `custom` is built from `label_nc` (required), the don't-care
    class and instance maps. The custom-only options are refused for the fixed presets."""
    preset = get_preset(dataset)
    if dataset == "custom":
        if label_nc is None:
            raise ConfigError("the custom dataset needs its number of classes (--label-nc N, or --label-nc auto)")
        return custom_preset(label_nc, contain_dontcare, use_instance)
    given = [n for n, v in (("label-nc", label_nc is not None), ("contain-dontcare", contain_dontcare),
                            ("use-instance", use_instance)) if v]
    if given:
        raise ConfigError(f"--{', --'.join(given)} apply to the custom dataset only; {dataset} has "
                          f"{preset.label_nc} classes{' and instance maps' if preset.use_instance else ''} "
                          "fixed by its preset")
    return preset
