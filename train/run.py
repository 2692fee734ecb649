"""Runs `fit` for a `RunConfig`: devices, run directory, data, GAN, monitor."""

import json
import os
import shutil
import socket
import sys
import threading
import time

import keras
import tensorflow as tf

from clade_tf import viz
from clade_tf.config import RunConfig
from clade_tf.data import pipeline, sources
from clade_tf.gan import build_gan
from clade_tf.outdir import OutputError, check_writable
from clade_tf.rundir import RunDirectory, WeightsError
from train.callbacks import RunMonitor, enlarge_grid, sample_quality

NUM_SAMPLE_IMAGES = 32  # the fixed batch of sample grids and their quality number
STRATEGIES = ("auto", "one", "mirrored", "multiworker")


class UsageError(Exception):
    """A user mistake (bad flag, missing file): printed as one line, exit code 2."""


def read_tf_config():
    """TF_CONFIG as `(cluster, task)`, checked for the shape TensorFlow expects."""
    text = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(tf_config, dict):
        raise UsageError(f"TF_CONFIG: expected a JSON object with 'cluster' and 'task', got {text[:60]!r}")
    cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UsageError("TF_CONFIG: 'cluster' and 'task' must be JSON objects, e.g. {\"cluster\": {\"worker\": "
                         "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise UsageError(f"TF_CONFIG cluster.{kind}: expected a list of 'host:port' strings, got {addresses!r}")
    if cluster:
        kind, index = task.get("type"), task.get("index", 0)
        if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
            raise UsageError(f"TF_CONFIG task {task!r}: expected a type of the cluster ({', '.join(cluster)}) "
                             "and an index into its list")
    return cluster, task


def wait_for_peers(cluster, task, timeout):
    """Waits until every other task of the cluster answers on its TF_CONFIG address, or
    raises `UsageError` naming the first one that did not within `timeout` seconds.

    TensorFlow's own connection setup would wait silently, holding the interpreter, so
    this runs before it: each task listens on its own address (which also checks that
    the port is free) while it probes the others, then hands the port to TensorFlow."""
    kind, index = task.get("type"), task.get("index", 0)
    peers = [(k, i, addr) for k, addrs in cluster.items() for i, addr in enumerate(addrs) if (k, i) != (kind, index)]
    own = cluster[kind][index]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(own.rpartition(":")[2])))
    except (OSError, ValueError) as e:
        listener.close()
        raise UsageError(f"TF_CONFIG's {kind} {index} (this task) at {own}: cannot listen there "
                         f"({getattr(e, 'strerror', None) or e})") from None
    listener.listen(16)
    listener.settimeout(0.2)
    done = threading.Event()

    def answer():
        while not done.is_set():
            try:
                listener.accept()[0].close()
            except OSError:
                pass

    responder = threading.Thread(target=answer, name="peer-answer", daemon=True)
    responder.start()

    def reachable(addr):
        host, _, port = addr.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return True
        except (OSError, ValueError):
            return False

    try:
        deadline = time.monotonic() + timeout
        waiting = list(peers)
        while waiting:
            waiting = [p for p in waiting if not reachable(p[2])]
            if waiting and time.monotonic() > deadline:
                k, i, addr = waiting[0]
                raise UsageError(f"TF_CONFIG's {k} {i} at {addr} did not answer within {timeout:g} s "
                                 "(--peer-timeout); start every task of the cluster, or check its address")
            if waiting:
                time.sleep(0.5)
        # the others may still be probing this task: answer a little longer
        time.sleep(min(2.0, timeout))
    finally:
        done.set()
        responder.join()
        listener.close()


def make_strategy(name, peer_timeout=600.0):
    if name not in STRATEGIES:
        raise UsageError(f"--strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    cluster, task = read_tf_config()
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if name == "multiworker" or (name == "auto" and workers > 1):
        if workers == 0:
            raise UsageError("--strategy multiworker needs TF_CONFIG describing the cluster")
        if workers > 1:
            wait_for_peers(cluster, task, peer_timeout)
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
    """A command that starts TensorBoard on this run, runnable as printed. (Not on the run's
    parent: for `--out /x/run` that may be a whole home folder or checkout, all of it scanned.)"""
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)  # .venv/bin/python, as the README's setup makes it
    return f"{python} -m tensorboard.main --logdir {os.path.normpath(out)}"


def run(cfg: RunConfig, out, strategy="auto", resume_required=False, verbose=1, peer_timeout=600.0):
    """Trains to `cfg.optim.steps` total steps in the run directory `out`, resuming from
    its newest intact checkpoint if there is one. Returns a summary dict.

    The chief holds a lock on the run directory while it runs (a second trainer is
    refused). A run directory this call created is removed again if the run fails before
    its first checkpoint, so a failed start leaves nothing behind."""
    # MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = make_strategy(strategy, peer_timeout)
    chief = is_chief(strategy)
    run_dir = RunDirectory(out)  # only the chief writes to it
    try:
        check_writable(out)
    except OutputError as e:
        raise UsageError(str(e)) from None
    created = not os.path.exists(out)
    if not chief:
        return _run(cfg, run_dir, strategy, chief, resume_required, verbose)
    try:
        with run_dir.lock():
            return _run(cfg, run_dir, strategy, chief, resume_required, verbose)
    except BaseException:
        if created and os.path.isdir(out) and not run_dir.checkpoints():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _restore(run_dir, gan, chief, resume_required):
    """Restores the newest intact checkpoint (damaged newer ones are named and set aside);
    returns (step, path) or (0, None)."""
    intact = run_dir.intact_checkpoints(set_aside=chief)
    if not intact:
        if resume_required:
            what = "intact checkpoint (see the warnings above)" if run_dir.checkpoints() else "checkpoint"
            raise UsageError(f"--resume: no {what} in {run_dir.path}")
        return 0, None
    _, path = intact[0]
    try:
        return RunDirectory.restore_checkpoint(path, gan), path
    except (OSError, ValueError, KeyError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: cannot be restored ({detail})") from None


def _run(cfg, run_dir, strategy, chief, resume_required, verbose):
    t0 = time.time()
    out = run_dir.path
    keras.utils.set_random_seed(cfg.seed)
    o = cfg.optim
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
    start, ckpt = _restore(run_dir, gan, chief, resume_required)
    if ckpt is not None and verbose:
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
    evaluator = None
    if cfg.evaluation.every and chief:
        from clade_tf.evaluation import Evaluator

        evaluator = Evaluator(cfg.evaluation, cfg.data, cfg.generator, seed=cfg.seed)
        evaluator.prepare()  # the real statistics, once
    quality = sample_quality(cfg.data.dataset, cfg.generator.num_classes)
    monitor = RunMonitor(run_dir, gan, start, o.steps, batch, colours, cfg.generator.num_classes,
                         quality, cfg.monitor, chief, progress=verbose > 0,
                         evaluator=evaluator, eval_every=cfg.evaluation.every)
    if verbose and chief:
        # here, once the data, the networks and the checkpoint are known to be good: a notice
        # printed earlier would stand above the error of a run that never starts
        if o.vgg_weights is None:
            print("notice: no --vgg-weights given, the VGG19 perceptual loss is off")
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
        viz.save_png(run_dir.file("samples_final.png"), enlarge_grid(grid, batch["label"].shape[1]))
    summary.update(final_step=final, seconds=time.time() - t0, fit_seconds=fit_seconds,
                   steps_per_second=(final - start) / max(fit_seconds, 1e-9),
                   quality_name=quality.name if quality else None, quality_init=monitor.initial_quality,
                   quality_final=monitor.last_quality,
                   best_fid=monitor.best_fid, last_metrics=monitor.last_metrics)
    return summary
