"""Builds everything a training run needs from a `TrainConfig` and runs `fit`."""

import dataclasses
import json
import math
import os
import sys
import time

import keras
import tensorflow as tf

from clade_tf import ConvEncoder, Generator, MultiscaleDiscriminator, viz
from clade_tf.config import GeneratorConfig
from clade_tf.data import folders, pipeline
from clade_tf.presets import custom_preset, get_preset
from train.callbacks import LinearDecay, RunMonitor
from train.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    remove_partial_checkpoints,
    restore_checkpoint,
)
from train.config import TrainConfig
from train.gan import CladeGAN, load_vgg19

NUM_FIDELITY_SAMPLES = 32

# TrainConfig fields that must not change when a run is continued.
_FIXED_ON_RESUME = ("dataset", "norm", "batch_size", "seed", "use_vae", "param_free_norm",
                    "label_nc", "contain_dontcare", "use_instance", "synthetic_length")


class UsageError(Exception):
    """A user mistake (bad flag, missing file): printed as one line, exit code 2."""


def resolve_preset(cfg: TrainConfig):
    if cfg.dataset != "custom":
        return get_preset(cfg.dataset)
    if cfg.label_nc is None:
        raise UsageError("--dataset custom needs --label-nc N (or --label-nc auto)")
    return custom_preset(cfg.label_nc, cfg.contain_dontcare, cfg.use_instance)


def make_strategy(name):
    if name not in ("auto", "one", "mirrored", "multiworker"):
        raise UsageError(f"--strategy {name!r}: expected auto, one, mirrored or multiworker")
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


def make_source(cfg, preset, gen_cfg, phase="train"):
    use_dist = gen_cfg.norm_mode == "clade-icpe"
    if cfg.dataset == "synthetic":
        seed = cfg.seed if phase == "train" else cfg.seed + 1_000_003
        return pipeline.SyntheticSource(preset.num_classes, preset.image_height, preset.image_width,
                                        cfg.synthetic_length, seed, use_dist)
    if not cfg.dataroot:
        raise UsageError(f"--dataset {cfg.dataset} needs --dataroot DIR")
    samples, problems = folders.list_samples(cfg.dataset, cfg.dataroot, phase, preset.use_instance)
    if problems:
        if not cfg.skip_bad_samples:
            raise folders.BadSample(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        for p in problems:
            print(f"skipping: {p}", file=sys.stderr)
    palette = folders.load_palette(cfg.palette) if cfg.palette else None
    spec = folders.LabelSpec(cfg.dataset, preset.label_nc, preset.contain_dontcare, palette)
    prep = folders.Preprocess(preset.preprocess, preset.load_size if phase == "train" else preset.image_width,
                              preset.image_height, preset.image_width, flip=(phase == "train"))
    return pipeline.FolderSource(samples, spec, prep, preset.use_instance, use_dist, cfg.skip_bad_samples)


def sample_batch(cfg, preset, gen_cfg, n):
    """A fixed batch for grids and fidelity: validation data when there is any."""
    try:
        source = make_source(cfg, preset, gen_cfg, phase="val")
    except (FileNotFoundError, ValueError):
        source = make_source(cfg, preset, gen_cfg, phase="train")
    n = min(n, len(source))
    ds = pipeline.make_dataset(source, n, preset.image_height, preset.image_width, seed=cfg.seed,
                               shuffle=False, use_instance=preset.use_instance,
                               use_dist=gen_cfg.norm_mode == "clade-icpe", num_steps=1)
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


def check_run_dir(run_dir, record):
    """Writes config.json, or checks it matches when the run directory is reused."""
    path = os.path.join(run_dir, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diffs = []
        for net in ("generator", "discriminator"):
            if old.get(net) != record[net]:
                diffs.append(f"{net} architecture")
        for k in _FIXED_ON_RESUME:
            if old.get("train", {}).get(k) != record["train"].get(k):
                diffs.append(f"{k} ({old.get('train', {}).get(k)!r} -> {record['train'].get(k)!r})")
        if diffs and latest_checkpoint(run_dir)[0] is not None:
            raise UsageError(
                f"{run_dir} holds a run with different settings: {', '.join(diffs)}; "
                "use another --out or the original flags"
            )
    atomic_write_text(path, json.dumps(record, indent=2))


def build_gan(cfg, gen_cfg, preset):
    generator = Generator(gen_cfg, name="generator")
    discriminator = MultiscaleDiscriminator(preset.discriminator_config(), name="discriminator")
    encoder = None
    if cfg.use_vae:
        size = 256 if min(preset.image_height, preset.image_width) >= 256 else 64
        encoder = ConvEncoder(ngf=gen_cfg.ngf, z_dim=gen_cfg.z_dim, input_size=size, name="encoder")
    vgg = None
    if cfg.vgg_weights:
        vgg = load_vgg19(cfg.vgg_weights, preset.image_height, preset.image_width)
    gan = CladeGAN(generator, discriminator, encoder, vgg, cfg.lambda_feat, cfg.lambda_vgg,
                   cfg.lambda_kld, seed=cfg.seed)

    def adam(lr):
        if cfg.decay_start is not None:
            lr = LinearDecay(lr, cfg.decay_start, cfg.steps)
        return keras.optimizers.Adam(lr, beta_1=cfg.beta1, beta_2=cfg.beta2)

    gan.compile(g_optimizer=adam(cfg.g_lr), d_optimizer=adam(cfg.d_lr))
    gan.build_all()
    return gan


def run(cfg: TrainConfig, resume_required=False, verbose=1):
    """Trains to `cfg.steps` total steps, resuming from the run directory's newest
    checkpoint if there is one. Returns a summary dict."""
    t0 = time.time()
    # MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = make_strategy(cfg.strategy)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        # Under mixed_float16 every generator gradient came back None in our CPU check
        # (Keras 3.15, custom train_step + LossScaleOptimizer); until that is solved
        # and verified on a GPU, refuse rather than train silently wrong.
        raise UsageError("--mixed-precision is not supported yet (gradients vanish under "
                         "mixed_float16 in this version); train in float32")
    if cfg.vgg_weights is None and verbose:
        print("notice: no --vgg-weights given, the VGG19 perceptual loss is off")
    preset = resolve_preset(cfg)
    gen_cfg: GeneratorConfig = preset.generator_config(
        cfg.norm, use_vae=cfg.use_vae, param_free_norm=cfg.param_free_norm)
    chief = is_chief(strategy)
    run_dir = cfg.out  # only the chief writes to it
    if chief:
        os.makedirs(run_dir, exist_ok=True)
    record = {"preset": dataclasses.asdict(preset), "generator": gen_cfg.to_dict(),
              "discriminator": preset.discriminator_config().to_dict(), "train": cfg.to_dict()}
    if chief:
        check_run_dir(run_dir, record)
        remove_partial_checkpoints(run_dir)

    source = make_source(cfg, preset, gen_cfg)
    spe = pipeline.steps_per_epoch(source, cfg.batch_size)
    if cfg.batch_size % strategy.num_replicas_in_sync:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    with strategy.scope():
        gan = build_gan(cfg, gen_cfg, preset)
    step, ckpt = latest_checkpoint(cfg.out)
    if resume_required and ckpt is None:
        raise UsageError(f"--resume: no checkpoint in {cfg.out}")
    start = 0
    if ckpt is not None:
        start = restore_checkpoint(ckpt, gan)
        if verbose:
            print(f"resuming from {ckpt} (step {start} of {cfg.steps})")
    summary = {"run_dir": cfg.out, "start_step": start, "total_steps": cfg.steps,
               "steps_per_epoch": spe, "replicas": strategy.num_replicas_in_sync}
    if start >= cfg.steps:
        print(f"{cfg.out} is already at step {start} >= --steps {cfg.steps}: nothing to do")
        summary.update(final_step=start, seconds=time.time() - t0)
        return summary

    ds = pipeline.make_dataset(source, cfg.batch_size, preset.image_height, preset.image_width,
                               seed=cfg.seed, start_step=start, shuffle=True,
                               use_instance=preset.use_instance,
                               use_dist=gen_cfg.norm_mode == "clade-icpe")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(opts)
    batch = sample_batch(cfg, preset, gen_cfg, NUM_FIDELITY_SAMPLES)
    colours = viz.palette(preset.name, preset.num_classes)
    monitor = RunMonitor(run_dir, gan, cfg.steps, batch, colours, preset.num_classes,
                         cfg.dataset == "synthetic", cfg.log_every, cfg.image_every,
                         cfg.checkpoint_every, chief)
    epochs = math.ceil(cfg.steps / spe)
    t_fit = time.time()
    gan.fit(ds, epochs=epochs, initial_epoch=start // spe, steps_per_epoch=spe,
            callbacks=[monitor], verbose=verbose, shuffle=False)
    fit_seconds = time.time() - t_fit
    final = int(gan.g_optimizer.iterations.numpy())
    if chief:
        path = os.path.join(cfg.out, "generator.keras")
        tmp = path + ".tmp.keras"
        gan.generator.save(tmp)
        os.replace(tmp, path)
        grid, _ = monitor.evaluate_samples(final, write=False)
        viz.save_png(os.path.join(cfg.out, "samples_final.png"), grid)
    summary.update(final_step=final, seconds=time.time() - t0, fit_seconds=fit_seconds,
                   steps_per_second=(final - start) / max(fit_seconds, 1e-9),
                   fidelity_init=monitor.initial_fidelity, fidelity_final=monitor.last_fidelity)
    return summary

