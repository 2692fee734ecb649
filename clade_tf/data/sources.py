"""Every sample source, and the factory that picks one for a `DataConfig`.

A source has `len(source)` samples and `load(index, rng)`, which returns sample `index`
as a dict of numpy arrays (`image` float32 [H, W, 3] in [-1, 1], `label` int32 [H, W],
`instance` int32 / `dist` float32 [H, W, 2] when asked), augmented by `rng`:

- `SyntheticSource`: the embedded procedural dataset (`clade_tf.data.synthetic`);
- `ScenesSource`: `synthetic-scenes` (`clade_tf.data.scenes`);
- `FolderSource`: a real dataset on disk (`clade_tf.data.folders`);
- `CacheSource`: a prepared cache (written by `clade_tf.data.cache.prepare`).

Training, export calibration and evaluation read data through `make_source`, so they
see the same samples in the same order: sample `k` of epoch `e` is
`epoch_order(...)[k]` with augmentation from `sample_rng(seed, e, index)` (see
`clade_tf.data.pipeline`, the stream).
"""

import concurrent.futures
import os
import threading

import numpy as np

from clade_tf.config import ConfigError, DataConfig, GeneratorConfig
from clade_tf.data import folders, pipeline, scenes, synthetic
from clade_tf.data.cache import CacheError, CacheLayout, read_manifest
from clade_tf.data.icpe import icpe_distance_map
from clade_tf.data.report import report_once
from clade_tf.outdir import sha256

# The validation stream of the synthetic dataset: other samples than the training ones.
_SYNTHETIC_VAL_OFFSET = 1_000_003


class SyntheticSource:
    """The embedded procedural dataset (`length` samples per epoch)."""

    def __init__(self, num_classes, height, width, length=1024, seed=0, use_dist=False):
        self.num_classes, self.height, self.width = num_classes, height, width
        self.length, self.seed, self.use_dist = int(length), int(seed), use_dist
        self.bad_count = 0

    def __len__(self):
        return self.length

    def make_sample(self, index):
        return synthetic.make_sample(self.seed, int(index), self.num_classes, self.height, self.width)

    def load(self, index, rng):
        s = self.make_sample(index)
        if self.use_dist:
            s["dist"] = icpe_distance_map(s["label"])
        return s


class ScenesSource(SyntheticSource):
    """The `synthetic-scenes` dataset (`clade_tf.data.scenes`), `length` samples per epoch."""

    def __init__(self, height, width, length=1024, seed=0, use_dist=False):
        super().__init__(scenes.NUM_CLASSES, height, width, length, seed, use_dist)

    def make_sample(self, index):
        return scenes.make_sample(self.seed, int(index), self.height, self.width)


class FolderSource:
    """A real dataset on disk (see `folders.list_samples`).

    With `skip_bad=True` a bad sample is reported once on stderr, counted in
    `bad_count`, and replaced by the next sample of the epoch's order
    (deterministic, so resume stays exact); otherwise it raises `BadSample`.
    """

    def __init__(self, samples, spec, prep, use_instance, use_dist, skip_bad=False, where="the dataset"):
        if not samples:
            raise ValueError(f"{where}: no usable samples")
        self.where = where
        self.samples = list(samples)
        self.spec, self.prep = spec, prep
        self.use_instance, self.use_dist = use_instance, use_dist
        self.skip_bad = skip_bad
        self.bad = {}
        self._lock = threading.Lock()

    @property
    def bad_count(self):
        return len(self.bad)

    def __len__(self):
        return len(self.samples)

    def load(self, index, rng):
        s = self.samples[int(index)]
        return folders.load_folder_sample(s, self.spec, self.prep, rng, self.use_instance, self.use_dist)

    def report_bad(self, index, err):
        with self._lock:
            if index not in self.bad:
                self.bad[index] = str(err)
                report_once(f"skipping bad sample ({len(self.bad)} so far): {err}", key=str(err))


class CacheSource:
    """A prepared cache (`clade_tf.data.cache`) as a sample source; its `tf.data` stream,
    read and cropped in TensorFlow ops, is `pipeline.make_cache_dataset`.

    Opening it checks the manifest against the run's data and crop size, the source
    files' sizes and mtimes, and every sample file's size and SHA-256 (`verify="sha256"`,
    hashed in threads; `"size"` skips the hashing)."""

    def __init__(self, path, data, crop_size, use_instance, use_dist, verify="sha256"):
        self.path, self.where = path, f"prepared cache {path}"
        m = self.manifest = read_manifest(path)
        want = {"dataset": data.dataset, "label_nc": data.label_nc, "contain_dontcare": data.contain_dontcare,
                "preprocess": data.preprocess, "load_size": data.load_size, "crop_size": list(crop_size)}
        diffs = [f"{k} {m.get(k)!r} (the run: {v!r})" for k, v in want.items() if m.get(k) != v]
        if diffs:
            raise CacheError(f"{path} was prepared with {', '.join(diffs)}; prepare it again for this run")
        for key, needed in (("instance", use_instance), ("dist", use_dist)):
            if needed and key not in m["keys"]:
                flag = "--icpe" if key == "dist" else "instance maps"
                raise CacheError(f"{path} has no {key} maps, which this generator needs (prepare with {flag})")
        self.keys = ("image", "label") + (("instance",) if use_instance else ()) + (("dist",) if use_dist else ())
        self.layout = CacheLayout(tuple(m["size"]), tuple(m["keys"]))
        self.files = [os.path.join(path, "samples", f["name"]) for f in m["files"]]
        self._check_sources()
        self._check_files(verify)
        h, w = crop_size
        self.prep = folders.Preprocess(data.preprocess, data.load_size, h, w, flip=True)
        self.bad_count = 0

    def _check_sources(self):
        for rec in self.manifest["sources"]:
            for r in rec.values():
                try:
                    st = os.stat(r["path"])
                except OSError:
                    raise CacheError(f"{self.path}: its source file {r['path']} is gone; prepare it again") from None
                if (st.st_size, st.st_mtime_ns) != (r["bytes"], r["mtime_ns"]):
                    raise CacheError(f"{self.path}: its source file {r['path']} changed since it was prepared; "
                                     "prepare it again")

    def _check_files(self, verify):
        size = self.layout.nbytes
        for f in self.files:
            try:
                n = os.path.getsize(f)
            except OSError:
                raise CacheError(f"{self.path}: sample file {f} is missing") from None
            if n != size:
                raise CacheError(f"{self.path}: sample file {f} has {n} bytes, expected {size} (damaged)")
        if verify == "sha256":
            with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as ex:
                for f, rec, digest in zip(self.files, self.manifest["files"], ex.map(sha256, self.files)):
                    if digest != rec["sha256"]:
                        raise CacheError(f"{self.path}: sample file {f} changed since it was prepared "
                                         "(SHA-256 differs); prepare the cache again")

    def __len__(self):
        return len(self.files)

    def read(self, index):
        """The arrays of sample `index` at the load size."""
        with open(self.files[int(index)], "rb") as f:
            blob = f.read()
        return {k: np.frombuffer(blob, dtype, n // np.dtype(dtype).itemsize, off).reshape(shape)
                for k, off, n, shape, dtype in self.layout.parts()}

    def load(self, index, rng):
        """Sample `index` cropped and flipped by `rng` (as `folders.load_folder_sample`)."""
        full = {k: v for k, v in self.read(index).items() if k in self.keys}
        return folders.crop_sample(full, self.prep, folders.crop_params(self.prep, self.layout.size, rng))


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
            return ScenesSource(h, w, data.synthetic_length, seed + offset, use_dist)
        return SyntheticSource(data.num_classes, h, w, data.synthetic_length, seed + offset, use_dist)
    if data.cache and phase == "train" and augment is not False:
        return CacheSource(data.cache, data, (h, w), use_instance, use_dist)
    if not data.dataroot:
        raise ConfigError(f"the {data.dataset} dataset needs its folder (--dataroot DIR)")
    samples, problems = folders.list_samples(data.dataset, data.dataroot, phase, use_instance)
    if problems:
        if not data.skip_bad_samples:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise folders.BadSample(problems[0] + more)
        for p in problems:
            report_once(f"skipping: {p}")
    if not samples:
        raise folders.BadSample(f"{data.dataroot}: no {phase} samples in the {data.dataset} layout "
                                f"(python -m train --help lists each layout)")
    palette = folders.load_palette(data.palette) if data.palette else None
    spec = folders.LabelSpec(data.dataset, data.label_nc, data.dontcare_class, palette)
    # training augments (resize to load_size, random crop, flip); evaluation resizes to the generator's size
    augment = phase == "train" if augment is None else augment
    prep = folders.Preprocess(data.preprocess, data.load_size if augment else w, h, w, flip=augment)
    return FolderSource(samples, spec, prep, use_instance, use_dist, data.skip_bad_samples,
                        where=f"{data.dataroot} ({data.dataset} layout, {phase} split)")


def make_training_dataset(source, generator: GeneratorConfig, batch_size, seed, start_step=0,
                          num_steps=None, shuffle=True):
    """The `tf.data` batches of `source` from global step `start_step` (see `pipeline.make_dataset`)."""
    keys = generator.data_keys
    if isinstance(source, CacheSource):  # a prepared cache reads and crops in TensorFlow ops
        return pipeline.make_cache_dataset(source, batch_size, seed=seed, start_step=start_step,
                                           num_steps=num_steps, shuffle=shuffle)
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
