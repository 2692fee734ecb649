"""Training configuration: one dataclass, resolved from CLI flags and the preset."""

import dataclasses

DATASETS = ("synthetic", "ade20k", "ade20k-outdoor", "cityscapes", "coco-stuff", "custom")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (what to train is the `GeneratorConfig` stored beside it).

    Attributes:
        dataset: preset / data layout name.
        dataroot: dataset folder (unused for `synthetic`).
        norm: generator norm mode.
        batch_size: global batch size.
        steps: total optimizer steps of the run (resume continues to this total).
        out: run directory.
        seed: seed of data order, augmentation, initialisation and sampling.
        g_lr, d_lr, beta1, beta2: TTUR Adam settings (official: 1e-4, 4e-4, 0, 0.9).
        decay_start: step from which both learning rates decay linearly to 0 at
            `steps` (None: no decay).
        lambda_feat, lambda_vgg, lambda_kld: loss weights.
        vgg_weights: local VGG19 (notop) Keras weights file; None disables the VGG loss.
        use_vae: train with the image encoder (style latent).
        strategy: `auto`, `one`, `mirrored` or `multiworker`.
        checkpoint_every, log_every, image_every: intervals in steps.
        skip_bad_samples: report and skip bad samples instead of stopping.
        label_nc: classes without don't-care (custom datasets).
        contain_dontcare: custom labels have a don't-care value 255.
        palette: colour -> class file for custom RGB masks.
        use_instance: custom datasets: read `instances/`.
        mixed_precision: `mixed_float16` compute (GPUs).
        synthetic_length: samples per epoch of the synthetic dataset.
        param_free_norm: `syncbatch`, `batch` or `instance`.
    """

    dataset: str = "synthetic"
    dataroot: str | None = None
    norm: str = "clade"
    batch_size: int = 8
    steps: int = 800
    out: str = "runs/synthetic-clade"
    seed: int = 0
    g_lr: float = 1e-4
    d_lr: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    decay_start: int | None = None
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kld: float = 0.05
    vgg_weights: str | None = None
    use_vae: bool = False
    strategy: str = "auto"
    checkpoint_every: int = 200
    log_every: int = 20
    image_every: int = 100
    skip_bad_samples: bool = False
    label_nc: int | None = None
    contain_dontcare: bool = False
    palette: str | None = None
    use_instance: bool = False
    mixed_precision: bool = False
    synthetic_length: int = 1024
    param_free_norm: str = "syncbatch"

    def to_dict(self):
        return dataclasses.asdict(self)
