"""Command line of the training application."""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DESCRIPTION = """Train a CLADE / CLADE-ICPE / SPADE generator with model.fit.

With no arguments: CLADE on the embedded synthetic dataset, on the CPU, in about
five minutes, into runs/synthetic-clade. Rerunning the same command continues the
run from its newest checkpoint (after a crash you lose at most one checkpoint
interval); --steps is the run's total, so a larger --steps extends it.
"""


def build_parser():
    from train.config import DATASETS, STRATEGIES, TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m train", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--dataset", default="synthetic", choices=DATASETS, help="dataset preset and folder layout (default: synthetic)")
    a("--dataroot", help="dataset folder (official layout of --dataset; not used by synthetic)")
    a("--norm", default="clade", choices=("clade", "clade-icpe", "spade"), help="generator normalization (default: clade)")
    a("--param-free-norm", default=d.param_free_norm, choices=("syncbatch", "batch", "instance"),
      help="parameter-free normalization inside CLADE/SPADE (default: syncbatch)")
    a("--batch-size", type=int, help="global batch size (default: the preset's; synthetic 8, others 1)")
    a("--steps", type=int, help=f"total optimizer steps of the run (default: {d.steps} for synthetic)")
    a("--epochs", type=int, help="total epochs instead of --steps (steps = epochs x samples // batch)")
    a("--out", help="run directory (default: runs/<dataset>-<norm>)")
    a("--resume", action="store_true", help="continue the run in --out; fail if it has no checkpoint "
      "(without it, an existing checkpoint is continued too)")
    a("--vgg-weights", metavar="FILE", help="local VGG19 notop Keras weights (.h5) for the perceptual loss; "
      "without it the VGG loss is off")
    a("--use-vae", action="store_true", help="train with the image encoder (z from the style of the real image)")
    a("--strategy", default="auto", choices=STRATEGIES,
      help="auto: MultiWorkerMirrored if TF_CONFIG lists several workers, Mirrored if several GPUs, else one device")
    a("--seed", type=int, default=d.seed, help="seed for data order, augmentation, init and sampling")
    a("--g-lr", type=float, default=d.g_lr, help="generator learning rate (TTUR default 1e-4)")
    a("--d-lr", type=float, default=d.d_lr, help="discriminator learning rate (TTUR default 4e-4)")
    a("--beta1", type=float, default=d.beta1, help="Adam beta1 (default 0)")
    a("--beta2", type=float, default=d.beta2, help="Adam beta2 (default 0.9)")
    a("--decay-start", type=int, metavar="STEP", help="decay both learning rates linearly to 0 from STEP to --steps")
    a("--lambda-feat", type=float, default=d.lambda_feat, help="feature matching weight (10)")
    a("--lambda-vgg", type=float, default=d.lambda_vgg, help="VGG loss weight (10)")
    a("--lambda-kld", type=float, default=d.lambda_kld, help="KL divergence weight in VAE mode (0.05)")
    a("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="N", help="checkpoint every N steps (and at the end)")
    a("--log-every", type=int, default=d.log_every, metavar="N", help="TensorBoard scalars every N steps")
    a("--image-every", type=int, default=d.image_every, metavar="N", help="TensorBoard sample grid every N steps")
    a("--skip-bad-samples", action="store_true", help="report and skip unreadable / mismatched / out-of-range samples instead of stopping")
    a("--label-nc", help="custom datasets: number of classes (without don't-care), or 'auto' to scan the labels")
    a("--contain-dontcare", action="store_true", help="custom datasets: label 255 is a don't-care class")
    a("--palette", metavar="FILE", help="custom datasets with RGB colour masks: colour -> class file (JSON or 'r g b class' lines)")
    a("--use-instance", action="store_true", help="custom datasets: read instance maps from <dataroot>/instances")
    a("--mixed-precision", action="store_true", help="mixed_float16 compute (not supported yet: refused with an error)")
    a("--synthetic-length", type=int, default=d.synthetic_length, help="samples per epoch of the synthetic dataset")
    return p


def resolve(args):
    """argparse namespace -> (TrainConfig, resume_required)."""
    from clade_tf.presets import get_preset
    from train.config import TrainConfig
    from train.run import UsageError

    preset = get_preset(args.dataset)
    if args.dataset != "custom":
        for flag in ("label_nc", "palette"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} applies to --dataset custom only; "
                                 f"{args.dataset} has {preset.label_nc} classes fixed by the preset")
    label_nc = args.label_nc
    if args.dataset == "custom":
        label_nc = resolve_label_nc(args)
    batch = args.batch_size or preset.batch_size
    if batch < 1:
        raise UsageError(f"--batch-size {batch}: expected >= 1")
    out = args.out or os.path.join("runs", f"{args.dataset}-{args.norm}")
    cfg = TrainConfig(
        dataset=args.dataset, dataroot=args.dataroot, norm=args.norm, batch_size=batch,
        out=out, seed=args.seed, g_lr=args.g_lr, d_lr=args.d_lr, beta1=args.beta1, beta2=args.beta2,
        decay_start=args.decay_start, lambda_feat=args.lambda_feat, lambda_vgg=args.lambda_vgg,
        lambda_kld=args.lambda_kld, vgg_weights=args.vgg_weights, use_vae=args.use_vae,
        strategy=args.strategy, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        image_every=args.image_every, skip_bad_samples=args.skip_bad_samples, label_nc=label_nc,
        contain_dontcare=args.contain_dontcare, palette=args.palette, use_instance=args.use_instance,
        mixed_precision=args.mixed_precision, synthetic_length=args.synthetic_length,
        param_free_norm=args.param_free_norm,
    )
    if args.steps is not None and args.epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    for name in ("checkpoint_every", "log_every", "image_every", "synthetic_length"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected >= 1")
    steps = args.steps
    if args.epochs is not None:
        from clade_tf.data import pipeline
        from train.run import make_source

        from train.run import resolve_preset

        resolved = resolve_preset(cfg)
        source = make_source(cfg, resolved, resolved.generator_config(args.norm))
        steps = args.epochs * pipeline.steps_per_epoch(source, batch)
    if steps is None:
        if args.dataset != "synthetic":
            raise UsageError(f"--dataset {args.dataset}: give --steps or --epochs")
        steps = TrainConfig().steps
    if steps < 1:
        raise UsageError(f"--steps {steps}: expected >= 1")
    return dataclasses.replace(cfg, steps=steps), args.resume


def resolve_label_nc(args):
    from clade_tf.data import folders
    from train.run import UsageError

    if args.label_nc is None:
        raise UsageError("--dataset custom needs --label-nc N (or --label-nc auto to scan the labels)")
    if args.label_nc != "auto":
        try:
            n = int(args.label_nc)
        except ValueError:
            raise UsageError(f"--label-nc {args.label_nc!r}: expected an integer or 'auto'") from None
        if n < 1:
            raise UsageError(f"--label-nc {n}: expected >= 1")
        return n
    if not args.dataroot:
        raise UsageError("--label-nc auto needs --dataroot")
    samples, _ = folders.list_samples("custom", args.dataroot, "train", False)
    palette = folders.load_palette(args.palette) if args.palette else None
    classes = folders.scan_label_classes(samples, palette)
    if args.contain_dontcare:
        classes = [c for c in classes if c != 255]
    n = max(classes) + 1 if classes else 1
    print(f"--label-nc auto: {len(classes)} classes found in {len(samples)} label maps: "
          f"{classes[:50]}{' ...' if len(classes) > 50 else ''}; using label_nc={n}")
    return n


def main(argv=None):
    import tensorflow as tf

    from clade_tf.data.folders import BadSample
    from train.run import UsageError, run

    args = build_parser().parse_args(argv)
    try:
        cfg, resume_required = resolve(args)
        summary = run(cfg, resume_required=resume_required)
    except (UsageError, BadSample, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as e:
        msg = e.message.strip().splitlines()
        bad = [m for m in msg if "BadSample" in m or "label value" in m or "unreadable" in m]
        print(f"error: {(bad or msg)[0]}", file=sys.stderr)
        return 2
    print(f"done: {summary['final_step']} steps in {summary['run_dir']} "
          f"({summary.get('steps_per_second', 0):.2f} steps/s)")
    if summary.get("fidelity_final") is not None:
        init = summary.get("fidelity_init")
        print(f"synthetic fidelity: {init if init is None else round(init, 3)} at init -> "
              f"{summary['fidelity_final']:.3f} now")
    print(f"watch it: tensorboard --logdir {os.path.dirname(summary['run_dir'].rstrip('/')) or '.'}")
    return 0
