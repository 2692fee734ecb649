"""The training callback: progress, TensorBoard scalars and sample grids, checkpoints."""

import math
import os

import keras
import tensorflow as tf

from clade_tf import viz
from clade_tf.config import MonitorConfig
from clade_tf.data import synthetic
from clade_tf.gan import NonFiniteError

# sample grids saved as PNG are enlarged (nearest neighbour) until a tile is at least this many
# pixels tall: the procedural datasets' 64-px tiles are too small to judge at their size
GRID_TILE_PIXELS = 256


def enlarge_grid(grid, tile_height):
    """`grid` (uint8 `[H, W, 3]` of `tile_height`-pixel tiles) repeated pixel by pixel until a
    tile is `GRID_TILE_PIXELS` tall (not at all when it already is)."""
    factor = max(1, GRID_TILE_PIXELS // int(tile_height))
    return grid.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else grid


class SampleQuality:
    """A quality number of the generator on the fixed sample batch that needs nothing
    downloaded: `fn(fake images in [-1, 1], batch) -> float`, printed as `name` and logged
    to TensorBoard as `tag`."""

    def __init__(self, name, tag, fn):
        self.name, self.tag, self.fn = name, tag, fn

    def __call__(self, fake, batch):
        return float(self.fn(fake, batch))


def sample_quality(dataset, num_classes):
    """The `SampleQuality` of a procedural dataset: `synthetic`'s fidelity, `synthetic-scenes`'
    mIoU by the shipped segmenter (`clade_tf.metrics.scenes`); None for the others (their
    numbers come from `--eval-every`)."""
    if dataset == "synthetic":
        return SampleQuality("synthetic fidelity", "synthetic/fidelity",
                             lambda fake, batch: synthetic.fidelity(fake, batch["label"], num_classes))
    if dataset == "synthetic-scenes":
        from clade_tf import viz
        from clade_tf.data import scenes
        from clade_tf.metrics import scenes as scene_metrics
        from clade_tf.metrics.segmentation import ConfusionMatrix

        segmenter = scene_metrics.load_segmenter()

        def miou(fake, batch):
            ids, _ = scene_metrics.segment(segmenter, viz.to_uint8(fake))
            return ConfusionMatrix(scenes.NUM_CLASSES).update(ids, batch["label"]).mean_iou()

        return SampleQuality("synthetic-scenes mIoU (shipped segmenter)", "synthetic_scenes/miou", miou)
    return None


def current_lr(opt):
    """The optimizer's learning rate now (schedules evaluated; works on distributed variables)."""
    return float(tf.convert_to_tensor(opt.learning_rate).numpy())


class RunMonitor(keras.callbacks.Callback):
    """Logs to TensorBoard and checkpoints, keyed by the global step: the checkpoint's
    step plus the batches trained since. (Not the optimizer's iteration count: under
    float16 loss scaling a step whose gradients overflow is skipped and not counted,
    but it consumed its batch, and the data position is the step.)

    Args:
        run_dir: the `RunDirectory` (`logs/`, `samples/` and `ckpt-*` go there).
        gan: the `CladeGAN`.
        start_step: the step the run starts (or resumes) from.
        total_steps: the run's step total; training stops there.
        sample_batch: a fixed batch (dict of numpy arrays) for image grids.
        colours: palette for the label column.
        num_classes: the generator's classes.
        quality: a `SampleQuality` printed at the start and end and logged with every sample
            grid (`sample_quality`), or None.
        monitor: a `MonitorConfig` (intervals in steps).
        is_chief: only the chief writes (multi-worker).
        progress: show a progress bar of the global step (first step -> total).
        grid_rows: samples shown in the image grid (fidelity uses the whole batch).
        evaluator: a `clade_tf.evaluation.Evaluator` scored every `eval_every` steps (FID /
            KID / mIoU to TensorBoard; the best generator by FID kept in `best/`), or None.
        eval_every: steps between evaluations.
    """

    def __init__(self, run_dir, gan, start_step, total_steps, sample_batch, colours, num_classes,
                 quality, monitor: MonitorConfig, is_chief=True, progress=False, grid_rows=6,
                 evaluator=None, eval_every=0):
        super().__init__()
        self.run_dir, self.gan, self.total = run_dir, gan, int(total_steps)
        self.step = int(start_step)
        self.sample_batch, self.colours, self.num_classes = sample_batch, colours, num_classes
        self.quality = quality or None
        self.grid_rows = grid_rows
        self.log_every, self.image_every = monitor.log_every, monitor.image_every
        self.checkpoint_every, self.is_chief = monitor.checkpoint_every, is_chief
        self.progress = progress and is_chief
        self._bar = None
        logdir = run_dir.file("logs", "train") if is_chief else None
        self.writer = tf.summary.create_file_writer(logdir) if is_chief else None
        self.last_quality = None
        self.initial_quality = None
        self._sample_fn = None
        self.evaluator, self.eval_every = evaluator, eval_every
        self._eval_fn = None
        best = run_dir.best_score() if evaluator is not None and is_chief else None
        self.best_fid = best["fid"] if best else None  # survives a restart
        self.last_metrics = None

    def evaluate_metrics(self, step):
        """Scores the generator (`evaluator`), logs it, and keeps it in `best/` when its FID
        is the lowest so far."""
        from clade_tf.evaluation import keras_generator_fn

        if self._eval_fn is None:
            self._eval_fn = keras_generator_fn(self.gan.generator)
        metrics, _ = self.evaluator.evaluate(self._eval_fn)
        self.last_metrics = metrics
        with self.writer.as_default(step=step):
            for key in ("fid", "kid_mean", "miou", "pixel_accuracy"):
                if metrics.get(key) is not None:
                    tf.summary.scalar(f"eval/{key}", metrics[key])
        self.writer.flush()
        improved = self.best_fid is None or metrics["fid"] < self.best_fid
        if improved:
            self.best_fid = metrics["fid"]
            self.run_dir.save_best(self.gan.generator, step, {k: v for k, v in metrics.items() if k != "iou"})
        if self.progress:
            print(f"\nstep {step}: FID {metrics['fid']:.3f}" + (" (best so far, saved in best/)" if improved else
                                                                 f" (best {self.best_fid:.3f})"))

    def _generate(self, batch):
        if self._sample_fn is None:
            self._sample_fn = tf.function(
                lambda b: self.gan.generate(b, training=False)[0], reduce_retracing=True)
        inputs = {k: tf.constant(v) for k, v in batch.items()}
        return self._sample_fn(inputs).numpy()

    def evaluate_samples(self, step, write=True):
        """Generates the sample grid (and the quality number); returns (grid, quality or None).
        The PNG in `samples/` is the grid enlarged (`enlarge_grid`); TensorBoard gets it as is."""
        fake = self._generate(self.sample_batch)
        b = self.sample_batch
        r = self.grid_rows
        grid = viz.sample_grid(b["label"][:r], fake[:r], b["image"][:r], self.colours)
        value = None
        if self.quality is not None:
            value = self.quality(fake, b)
            self.last_quality = value
        if write and self.writer is not None:
            with self.writer.as_default(step=step):
                tf.summary.image("samples/label_generated_real", grid[None], max_outputs=1)
                if value is not None:
                    tf.summary.scalar(self.quality.tag, value)
            self.writer.flush()
            samples = self.run_dir.file("samples")
            os.makedirs(samples, exist_ok=True)
            viz.save_png(os.path.join(samples, f"step_{step:07d}.png"), enlarge_grid(grid, b["label"].shape[1]))
        return grid, value

    def on_train_begin(self, logs=None):
        step = self.step
        if step == 0:
            _, value = self.evaluate_samples(0)
            self.initial_quality = value
            if value is not None:
                print(f"{self.quality.name} at initialisation: {value:.3f}")
        if self.progress:
            print(f"steps {step + 1}..{self.total}; the first step compiles the training graph, "
                  "so it takes longer than the rest")
            self._bar = keras.utils.Progbar(self.total, stateful_metrics=["G_total", "D_total"])
            self._bar.update(step)

    def check_finite(self, step, logs):
        """Stops the run at the first NaN / Inf loss term, before anything of it is saved."""
        bad = [k for k, v in (logs or {}).items() if not math.isfinite(float(v))]
        if bad:
            # the generator's terms first, the sums last: name the term that went first
            bad.sort(key=lambda k: (k.endswith("_total"), not k.startswith("G_"), k))
            also = f" (also {', '.join(bad[1:])})" if len(bad) > 1 else ""
            good = self.run_dir.latest_checkpoint()[1]
            kept = f"{good} kept" if good else "no checkpoint written"
            raise NonFiniteError(f"step {step}: loss {bad[0]} is {float(logs[bad[0]])}{also}: training diverged "
                                 f"(lower the learning rates or loss weights); {kept}")

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        step = self.step
        self.check_finite(step, logs)
        if self._bar is not None:
            self._bar.update(step, [(k, float(v)) for k, v in (logs or {}).items() if k.endswith("_total")],
                             finalize=step >= self.total)
        if self.writer is not None and logs and (step % self.log_every == 0 or step == self.total):
            with self.writer.as_default(step=step):
                for k, v in logs.items():
                    tf.summary.scalar(f"loss/{k}", float(v))
                tf.summary.scalar("lr/generator", current_lr(self.gan.g_optimizer))
                tf.summary.scalar("lr/discriminator", current_lr(self.gan.d_optimizer))
        if step % self.image_every == 0 and step != self.total:
            self.evaluate_samples(step)
        if self.evaluator is not None and self.is_chief and step % self.eval_every == 0:
            self.evaluate_metrics(step)
        if step % self.checkpoint_every == 0 and self.is_chief:
            self.run_dir.save_checkpoint(self.gan, step)
        if step >= self.total:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        step = self.step
        if self.is_chief:
            self.run_dir.save_checkpoint(self.gan, step)
        _, value = self.evaluate_samples(step)
        if value is not None:
            print(f"{self.quality.name} at step {step}: {value:.3f}")
        if self.writer is not None:
            self.writer.flush()
