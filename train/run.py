"""Runs `fit` for a `RunConfig`: devices, run directory, data, GAN, monitor."""

import json
import os
import sys
import time

import keras
import tensorflow as tf

from clade_tf import viz
from clade_tf.config import RunConfig
from clade_tf.data import pipeline, sources
from clade_tf.gan import build_gan
from clade_tf.rundir import RunDirectory
from train.callbacks import RunMonitor

NUM_SAMPLE_IMAGES = 32  # the fixed batch of sample grids and the synthetic fidelity
STRATEGIES = ("auto", "one", "mirrored", "multiworker")


class UsageError(Exception):
    """A user mistake (bad flag, missing file): printed as one line, exit code 2."""


def make_strategy(name):
    if name not in STRATEGIES:
        raise UsageError(f"--strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except json.JSONDecodeError as e:
        raise UsageError(f"TF_CONFIG is not valid JSON ({e})") from None
    workers = len(tf_config.get("cluster", {}).get("worker", [])) + len(
        tf_config.get("cluster", {}).get("chief", []))
    if name == "multiworker" or (name == "auto" and workers > 1):
        if workers == 0:
            raise UsageError("--strategy multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def check_run_dir(run_dir: RunDirectory, cfg: RunConfig):
    """Refuses to continue a run with settings a resume cannot change (before anything is written)."""
    if run_dir.has_config() and run_dir.latest_checkpoint()[0] is not None:
        diffs = cfg.resume_differences(run_dir.read_config())
        if diffs:
            raise UsageError(f"{run_dir.path} holds a run with different settings: {'; '.join(diffs)}; "
                             "use another --out or the original flags")


def tensorboard_hint(out):
    """A command that starts TensorBoard on the run's parent folder, runnable as printed."""
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)  # .venv/bin/python, as the README's setup makes it
    return f"{python} -m tensorboard.main --logdir {os.path.dirname(out.rstrip('/')) or '.'}"


def run(cfg: RunConfig, out, strategy="auto", resume_required=False, verbose=1):
    """Trains to `cfg.optim.steps` total steps in the run directory `out`, resuming from
    its newest checkpoint if there is one. Returns a summary dict."""
    t0 = time.time()
    # MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = make_strategy(strategy)
    keras.utils.set_random_seed(cfg.seed)
    o = cfg.optim
    if o.vgg_weights is None and verbose:
        print("notice: no --vgg-weights given, the VGG19 perceptual loss is off")
    chief = is_chief(strategy)
    run_dir = RunDirectory(out)  # only the chief writes to it
    source = sources.make_source(cfg.data, cfg.generator, cfg.seed)
    spe = pipeline.steps_per_epoch(source, o.batch_size)
    if o.batch_size % strategy.num_replicas_in_sync:
        raise UsageError(f"--batch-size {o.batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    if chief:
        check_run_dir(run_dir, cfg)
        run_dir.remove_partial_checkpoints()
    with strategy.scope():
        gan = build_gan(cfg)
    step, ckpt = run_dir.latest_checkpoint()
    if resume_required and ckpt is None:
        raise UsageError(f"--resume: no checkpoint in {out}")
    start = 0
    if ckpt is not None:
        start = RunDirectory.restore_checkpoint(ckpt, gan)
        if verbose:
            print(f"resuming from {ckpt} (step {start} of {o.steps})")
    if chief:
        # after the restore succeeded: config.json records the settings the run really continues with
        # (learning rates, loss weights and intervals may change on resume)
        run_dir.write_config(cfg)
    summary = {"run_dir": out, "start_step": start, "total_steps": o.steps,
               "steps_per_epoch": spe, "replicas": strategy.num_replicas_in_sync}
    if start >= o.steps:
        summary.update(final_step=start, seconds=time.time() - t0, nothing_to_do=True)
        return summary

    ds = sources.make_training_dataset(source, cfg.generator, o.batch_size, cfg.seed, start_step=start)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(opts)
    batch = sources.fixed_batch(cfg.data, cfg.generator, cfg.seed, NUM_SAMPLE_IMAGES)
    colours = viz.palette(cfg.data.dataset, cfg.generator.num_classes)
    monitor = RunMonitor(run_dir, gan, start, o.steps, batch, colours, cfg.generator.num_classes,
                         cfg.data.dataset == "synthetic", cfg.monitor, chief, progress=verbose > 0)
    if verbose and chief:
        print(f"watch it: {tensorboard_hint(out)}")
    t_fit = time.time()
    # The data stream is positioned by the step, so one "epoch" of exactly the steps
    # still to run: the progress bar shows what really runs.
    gan.fit(ds, epochs=1, steps_per_epoch=o.steps - start, callbacks=[monitor], verbose=0, shuffle=False)
    fit_seconds = time.time() - t_fit
    final = monitor.step
    if chief:
        run_dir.save_generator(gan.generator)
        grid, _ = monitor.evaluate_samples(final, write=False)
        viz.save_png(run_dir.file("samples_final.png"), grid)
    summary.update(final_step=final, seconds=time.time() - t0, fit_seconds=fit_seconds,
                   steps_per_second=(final - start) / max(fit_seconds, 1e-9),
                   fidelity_init=monitor.initial_fidelity, fidelity_final=monitor.last_fidelity)
    return summary
