"""The data-source factory: a `DataConfig` and the generator it feeds -> a sample source.

Training, export calibration and evaluation read data through here, so they see the
same samples in the same order: sample `k` of epoch `e` is `epoch_order(...)[k]`
with augmentation from `sample_rng(seed, e, index)` (see `clade_tf.data.pipeline`).
"""


import numpy as np

from clade_tf.config import ConfigError, DataConfig, GeneratorConfig
from clade_tf.data import folders, pipeline, scenes

# The validation stream of the synthetic dataset: other samples than the training ones.
_SYNTHETIC_VAL_OFFSET = 1_000_003


def make_source(data: DataConfig, generator: GeneratorConfig, seed=0, phase="train", augment=None):
    """A sample source (`len`, `load(index, rng)`) of `data` at the generator's size, with
    the maps the generator takes (`GeneratorConfig.data_keys`).

    Raises `ConfigError` (no dataroot), `FileNotFoundError` (missing folder) or
    `folders.BadSample` (a listed file without its partner, unless `skip_bad_samples`).
    """
    keys = generator.data_keys
    use_dist = "dist" in keys
    use_instance = "instance" in keys
    h, w = generator.image_height, generator.image_width
    if data.procedural:
        offset = 0 if phase == "train" else _SYNTHETIC_VAL_OFFSET
        if data.dataset == "synthetic-scenes":
            if data.num_classes != scenes.NUM_CLASSES:
                raise ConfigError(f"synthetic-scenes has {scenes.NUM_CLASSES} classes, the data config "
                                  f"{data.num_classes}")
            return pipeline.ScenesSource(h, w, data.synthetic_length, seed + offset, use_dist)
        return pipeline.SyntheticSource(data.num_classes, h, w, data.synthetic_length, seed + offset, use_dist)
    if data.cache and phase == "train" and augment is not False:
        from clade_tf.data.cache import CacheSource

        return CacheSource(data.cache, data, (h, w), use_instance, use_dist)
    if not data.dataroot:
        raise ConfigError(f"the {data.dataset} dataset needs its folder (--dataroot DIR)")
    samples, problems = folders.list_samples(data.dataset, data.dataroot, phase, use_instance)
    if problems:
        if not data.skip_bad_samples:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise folders.BadSample(problems[0] + more)
        for p in problems:
            pipeline.report_once(f"skipping: {p}")
    if not samples:
        raise folders.BadSample(f"{data.dataroot}: no {phase} samples in the {data.dataset} layout "
                                f"(python -m train --help lists each layout)")
    palette = folders.load_palette(data.palette) if data.palette else None
    spec = folders.LabelSpec(data.dataset, data.label_nc, data.contain_dontcare, palette)
    # training augments (resize to load_size, random crop, flip); evaluation resizes to the generator's size
    augment = phase == "train" if augment is None else augment
    prep = folders.Preprocess(data.preprocess, data.load_size if augment else w, h, w, flip=augment)
    return pipeline.FolderSource(samples, spec, prep, use_instance, use_dist, data.skip_bad_samples,
                                 where=f"{data.dataroot} ({data.dataset} layout, {phase} split)")


def make_training_dataset(source, generator: GeneratorConfig, batch_size, seed, start_step=0,
                          num_steps=None, shuffle=True):
    """The `tf.data` batches of `source` from global step `start_step` (see `pipeline.make_dataset`)."""
    keys = generator.data_keys
    if hasattr(source, "make_dataset"):  # a prepared cache reads and crops in TensorFlow ops
        return source.make_dataset(batch_size, seed=seed, start_step=start_step, num_steps=num_steps,
                                   shuffle=shuffle)
    return pipeline.make_dataset(source, batch_size, generator.image_height, generator.image_width,
                                 seed=seed, start_step=start_step, shuffle=shuffle,
                                 use_instance="instance" in keys, use_dist="dist" in keys,
                                 num_steps=num_steps)


def fixed_batch(data: DataConfig, generator: GeneratorConfig, seed, n):
    """A fixed batch of up to `n` samples (dict of numpy arrays) for sample grids and
    evaluation: the validation split when there is one, else the training data."""
    try:
        source = make_source(data, generator, seed, phase="val")
    except (FileNotFoundError, ValueError):
        source = make_source(data, generator, seed, phase="train")
    n = min(n, len(source))
    ds = make_training_dataset(source, generator, n, seed, num_steps=1, shuffle=False)
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


def first_samples(data: DataConfig, generator: GeneratorConfig, seed, n):
    """The first `n` samples of the training stream's first epoch (the order and
    augmentation training sees), as one dict of `[n, ...]` arrays with the generator's
    inputs (`z` drawn from the prior). Bad samples are passed over (at most `n` of them).

    Raises `ValueError` / `OSError` when the data cannot be read or does not fit.
    """
    source = make_source(data, generator, seed, phase="train")
    order = pipeline.epoch_order(len(source), seed, 0)
    samples, bad = [], []
    for index in order:
        if len(samples) == n:
            break
        try:
            samples.append(source.load(int(index), pipeline.sample_rng(seed, 0, int(index))))
        except (ValueError, OSError) as e:  # folders.BadSample is a ValueError
            bad.append(str(e))
            if len(bad) > n:
                raise ValueError(f"too many bad samples ({bad[0]})") from None
    if not samples:
        raise ValueError(f"{getattr(source, 'where', data.dataset)}: no usable samples ({bad[0] if bad else 'empty'})")
    keys = generator.data_keys
    out = {k: np.stack([s[k] for s in samples]).astype(np.float32 if k == "dist" else np.int32) for k in keys}
    size = (generator.image_height, generator.image_width)
    if out["label"].shape[1:] != size:
        raise ValueError(f"the data is {out['label'].shape[1]}x{out['label'].shape[2]}, "
                         f"the generator {size[0]}x{size[1]}")
    outside = out["label"][(out["label"] < 0) | (out["label"] >= generator.num_classes)]
    if outside.size:
        raise ValueError(f"the data has class {int(outside[0])}, the generator {generator.num_classes} classes")
    if generator.use_vae:
        out["z"] = np.random.default_rng([seed, 2]).standard_normal(
            (len(samples), generator.z_dim)).astype(np.float32)
    return out
