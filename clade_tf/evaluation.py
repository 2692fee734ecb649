"""Scoring a generator as the papers do: FID / KID against real statistics, mIoU and pixel
accuracy of a segmenter on the generated images (the metrics are in `clade_tf.metrics`).

    evaluator = Evaluator(run_config.evaluation, run_config.data, run_config.generator)
    metrics, grid = evaluator.evaluate(keras_generator_fn(generator))

As CLADE's `--train_eval`: the generated images of the validation split (quantized to
uint8, as the saved PNGs the official code scores) against the statistics of the
training images resized to the generator's size. `python -m evaluate` and training's
`--eval-every` both use this.
"""

import json
import os

import numpy as np

from clade_tf import viz
from clade_tf.config import DataConfig, EvalConfig, GeneratorConfig
from clade_tf.data import pipeline, sources
from clade_tf.outdir import sha256


def split_batches(source, generator: GeneratorConfig, batch_size, limit=None, seed=0):
    """The samples of `source` in order (first `limit`), as batches: the generator's inputs,
    `image` (real, [-1, 1]) and `z` for VAE models (drawn from the prior, seeded)."""
    n = len(source) if limit is None else min(int(limit), len(source))
    keys = ["image", *[k for k in generator.data_keys if k != "image"]]
    rng = np.random.default_rng([seed, 7])
    for start in range(0, n, batch_size):
        samples = [source.load(i, pipeline.sample_rng(seed, 0, i)) for i in range(start, min(n, start + batch_size))]
        batch = {k: np.stack([np.asarray(s[k]) for s in samples]) for k in keys}
        batch["label"] = batch["label"].astype(np.int32)
        if "instance" in batch:
            batch["instance"] = batch["instance"].astype(np.int32)
        if "dist" in batch:
            batch["dist"] = batch["dist"].astype(np.float32)
        if generator.use_vae:
            batch["z"] = rng.standard_normal((len(samples), generator.z_dim)).astype(np.float32)
        yield batch


def keras_generator_fn(generator):
    """`batch -> images in [-1, 1]` of a Keras `Generator` (inference mode)."""
    import tensorflow as tf

    names = generator.config.input_names
    fn = tf.function(lambda x: generator(x, training=False), reduce_retracing=True)
    return lambda batch: np.asarray(fn({k: tf.constant(batch[k]) for k in names if k in batch}))


def runner_generator_fn(runner, input_names):
    """`batch -> images` of an exported model (`clade_tf.export.load_runner`)."""
    return lambda batch: runner({k: batch[k] for k in input_names})


class Segmenter:
    """An exported semantic segmenter (SavedModel folder, `.onnx` or `.tflite`): one image
    input `[N, H, W, 3]`, one output of per-class scores `[N, h, w, C]`. Returns class ids
    mapped to the dataset's classes (`class_map`; -1: ignored)."""

    def __init__(self, path, size, value_range="0,1", class_map=None):
        if not os.path.exists(path):
            raise FileNotFoundError(f"segmenter not found: {path}")
        self.path, self.size = path, tuple(size)
        self.low, self.high = (float(v) for v in value_range.split(","))
        self.class_map = None
        if class_map is not None:
            try:
                with open(class_map) as f:
                    self.class_map = np.asarray(json.load(f), dtype=np.int64)
            except (OSError, ValueError, TypeError) as e:
                raise ValueError(f"{class_map}: expected a JSON list, the dataset class of each segmenter "
                                 f"class (-1: ignored) ({e})") from None
        self._run = self._load(path)

    @staticmethod
    def _load(path):
        try:
            if path.endswith(".tflite"):
                from ai_edge_litert.interpreter import Interpreter

                it = Interpreter(model_path=path)
                it.allocate_tensors()
                inp, out = it.get_input_details()[0], it.get_output_details()[0]

                def run(x):
                    res = []
                    for i in range(len(x)):  # static batch 1, as exports are
                        it.set_tensor(inp["index"], x[i:i + 1].astype(inp["dtype"]))
                        it.invoke()
                        res.append(it.get_tensor(out["index"]).copy())
                    return np.concatenate(res)

                return run
            if path.endswith(".onnx"):
                import onnxruntime as ort

                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                name = sess.get_inputs()[0].name
                return lambda x: sess.run(None, {name: x})[0]
            import tensorflow as tf

            f = tf.saved_model.load(path).signatures["serving_default"]
            name = next(iter(f.structured_input_signature[1]))
            return lambda x: next(iter(f(**{name: tf.constant(x)}).values())).numpy()
        except Exception as e:  # noqa: BLE001 - the runtimes raise their own types for corrupt files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{path}: cannot load the segmenter ({first})") from None

    def __call__(self, images_uint8):
        import tensorflow as tf

        x = tf.image.resize(tf.cast(images_uint8, tf.float32), self.size, method="bilinear").numpy()
        x = (x / 255.0 * (self.high - self.low) + self.low).astype(np.float32)
        scores = np.asarray(self._run(x))
        if scores.ndim != 4:
            raise ValueError(f"{self.path}: output of shape {scores.shape}, expected per-class scores [N, H, W, C]")
        ids = scores.argmax(-1)
        if self.class_map is not None:
            if len(self.class_map) != scores.shape[-1]:
                raise ValueError(f"class map has {len(self.class_map)} entries, the segmenter "
                                 f"{scores.shape[-1]} classes")
            ids = self.class_map[ids]
        return ids, scores.shape[-1]


def nearest_resize_labels(labels, size):
    """Label maps `[N, H, W]` resized nearest to `size` (as the papers downsample labels)."""
    h, w = labels.shape[1:]
    rows = (np.arange(size[0]) * h // size[0]).astype(np.int64)
    cols = (np.arange(size[1]) * w // size[1]).astype(np.int64)
    return labels[:, rows][:, :, cols]


class Evaluator:
    """Scores generators on the first `cfg.images` samples of `cfg.split`.

    FID / KID need the FID Inception (`cfg.inception_weights`), mIoU a segmenter
    (`cfg.segmenter`); either alone is enough, and what is not computed is `None` in the
    metrics with the reason in `metrics["skipped"]`. The Inception and the real
    statistics are prepared once (`prepare`), so a training run can evaluate often.
    `progress(done, total)` is called per batch."""

    def __init__(self, cfg: EvalConfig, data: DataConfig, generator: GeneratorConfig, seed=0):
        from clade_tf.metrics import fid_inception, load_stats

        if not cfg.inception_weights and not cfg.segmenter:
            raise ValueError("nothing to score: pass --inception-weights pt_inception-2015-12-05-6726825d.pth "
                             "(a local file; nothing is downloaded) for FID / KID, --segmenter FILE for mIoU, "
                             "or both")
        if cfg.real_stats and not cfg.inception_weights:
            # the statistics are Inception features: without the network they would be ignored
            raise ValueError(f"--real-stats {cfg.real_stats}: FID statistics need --inception-weights FILE too")
        self.cfg, self.data, self.gen_cfg, self.seed = cfg, data, generator, seed
        self.inception = fid_inception(cfg.inception_weights) if cfg.inception_weights else None
        self.real_features = None
        self.real_source = None
        if cfg.real_stats:
            self.mu, self.sigma = load_stats(cfg.real_stats)
        else:
            self.mu = self.sigma = None
        self.segmenter = None
        if cfg.segmenter:
            size = cfg.segmenter_size or (generator.image_height, generator.image_width)
            self.segmenter = Segmenter(cfg.segmenter, size, cfg.segmenter_range, cfg.class_map)
        self.source = self._split_source(cfg.split)
        self.num_images = min(cfg.images, len(self.source))

    def _split_source(self, split):
        try:
            return sources.make_source(self.data, self.gen_cfg, self.seed, phase=split, augment=False)
        except (FileNotFoundError, ValueError):
            if split != "val":
                raise
            # no validation split: a fixed held-out part is not available either, so the
            # training split (unaugmented) is scored, as the sample grids do
            return sources.make_source(self.data, self.gen_cfg, self.seed, phase="train", augment=False)

    def prepare(self, progress=None):
        """Computes the real statistics from the training split when none were given (and
        FID is scored)."""
        from clade_tf.metrics import extract_features, statistics

        if self.mu is not None or self.inception is None:
            return
        source = sources.make_source(self.data, self.gen_cfg, self.seed, phase="train", augment=False)
        n = min(self.cfg.real_images, len(source))
        done = 0

        def images():
            nonlocal done
            for b in split_batches(source, self.gen_cfg, self.cfg.batch_size, n, self.seed):
                done += len(b["label"])
                if progress:
                    progress(done, n)
                yield viz.to_uint8(b["image"])

        self.real_features = extract_features(self.inception, images())
        self.mu, self.sigma = statistics(self.real_features)
        self.real_source = f"{self.data.dataroot or self.data.dataset} train split, {n} images"

    def evaluate(self, generate, progress=None, grid_rows=6):
        """`(metrics dict, sample grid)` of `generate(batch) -> images in [-1, 1]`."""
        from clade_tf.metrics import (
            ConfusionMatrix,
            extract_features,
            frechet_distance,
            kernel_inception_distance,
            statistics,
        )

        self.prepare()
        cm = None
        if self.segmenter is not None:
            cm = ConfusionMatrix(self.gen_cfg.num_classes, ignore_index=self.data.dontcare_class)
        grid_parts = []
        done = 0

        def fakes():
            nonlocal done
            for batch in split_batches(self.source, self.gen_cfg, self.cfg.batch_size, self.num_images, self.seed):
                fake = np.asarray(generate(batch), dtype=np.float32)
                if not np.isfinite(fake).all():
                    raise ValueError("the generator's output holds NaN/Inf")
                images = viz.to_uint8(fake)
                if cm is not None:
                    ids, _ = self.segmenter(images)
                    labels = nearest_resize_labels(batch["label"], ids.shape[1:])
                    keep = ids >= 0  # segmenter classes mapped to -1 are ignored
                    cm.update(ids[keep], labels[keep])
                if sum(len(p[0]) for p in grid_parts) < grid_rows:
                    grid_parts.append((batch["label"], fake, batch["image"]))
                done += len(images)
                if progress:
                    progress(done, self.num_images)
                yield images

        if self.inception is None:
            n = sum(len(images) for images in fakes())  # the segmenter scores them as they are made
            reason = "no Inception weights named (--inception-weights)"
            metrics = {"images": n, "split": self.cfg.split, "fid": None, "kid_mean": None, "kid_std": None,
                       "skipped": {"fid": reason, "kid": reason}}
        else:
            features = extract_features(self.inception, fakes())
            mu, sigma = statistics(features)
            metrics = {"images": len(features), "split": self.cfg.split,
                       "fid": float(frechet_distance(self.mu, self.sigma, mu, sigma))}
            if self.real_features is not None:
                size = min(1000, len(features), len(self.real_features))
                kid_mean, kid_std = kernel_inception_distance(self.real_features, features, subset_size=size)
                metrics.update(kid_mean=float(kid_mean), kid_std=float(kid_std))
            else:  # KID needs the real features, not their statistics
                metrics.update(kid_mean=None, kid_std=None,
                               skipped={"kid": "the real statistics file holds no features (--real-stats)"})
        if cm is not None:
            metrics.update(miou=cm.mean_iou(), pixel_accuracy=cm.pixel_accuracy(),
                           iou=[None if np.isnan(v) else float(v) for v in cm.iou()])
        labels, fake, real = (np.concatenate([p[i] for p in grid_parts])[:grid_rows] for i in range(3))
        colours = viz.palette(self.data.dataset, self.gen_cfg.num_classes)
        return metrics, viz.sample_grid(labels, fake, real, colours)

    def provenance(self):
        """What the numbers were computed with (paths and checksums), for `metrics.json`."""
        c = self.cfg
        out = {"inception_weights": None, "real_stats": None}  # no FID scored
        if c.inception_weights:
            out["inception_weights"] = {"path": c.inception_weights, "sha256": sha256(c.inception_weights)}
            if c.real_stats:
                out["real_stats"] = {"path": c.real_stats, "sha256": sha256(c.real_stats)}
            else:
                out["real_stats"] = {"computed_from": self.real_source}
        if c.segmenter:
            out["segmenter"] = {"path": c.segmenter, "sha256": sha256(c.segmenter),
                                "input_size": list(self.segmenter.size), "range": c.segmenter_range,
                                "class_map": c.class_map}
        return out
