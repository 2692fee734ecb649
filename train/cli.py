"""Command line of the training application: flags -> `RunConfig` -> `train.run.run`."""

import os
import sys

from clade_tf.cli import (
    ArgumentParser,
    datasets,
    exit_code,
    import_tensorflow,
    positive_int,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DESCRIPTION = """Train a CLADE / CLADE-ICPE / SPADE generator with model.fit.

With no arguments: CLADE on the embedded synthetic dataset, on the CPU, in about
five to ten minutes on 2 cores, into runs/synthetic-clade. Rerunning the same
command continues the run from its newest checkpoint (after a crash you lose at most
one checkpoint interval); --steps is the run's total, so a larger --steps extends it.
"""

# what clade_tf.data.folders.list_samples reads; an empty or misplaced --dataroot points here
LAYOUTS = """folder layouts of --dataroot (the official ones; the validation parts are optional):
  ade20k, ade20k-outdoor  images/**/*_train_*.jpg and annotations/**/*_train_*.png, paired by name
                          (ADE_train_00000001.jpg ...); *_val_* files are the validation split
  cityscapes              leftImg8bit/train/<city>/*_leftImg8bit.png, gtFine/train/<city>/*_gtFine_labelIds.png
                          (and *_gtFine_instanceIds.png); val/ instead of train/ for validation
  coco-stuff              train_img/*.jpg, train_label/*.png (and train_inst/*.png); val_img/ ... for validation
  custom                  images/, labels/*.png (and instances/*.png with --use-instance), paired by name;
                          val_images/, val_labels/ for validation
"""
DEFAULT_SYNTHETIC_STEPS = 800


def build_parser():
    from clade_tf.config import DataConfig, MonitorConfig, OptimConfig
    from train.run import STRATEGIES

    o, m, d = OptimConfig(), MonitorConfig(), DataConfig()
    p = ArgumentParser(prog="python -m train", description=DESCRIPTION, epilog=LAYOUTS)
    a = p.add_argument
    a("--dataset", default="synthetic", choices=datasets(), help="dataset preset and folder layout")
    a("--dataroot", help="dataset folder (official layout of --dataset; not used by synthetic)")
    a("--norm", default="clade", choices=("clade", "clade-icpe", "spade"), help="generator normalization")
    a("--param-free-norm", default="syncbatch", choices=("syncbatch", "batch", "instance"),
      help="parameter-free normalization inside CLADE/SPADE")
    a("--batch-size", type=positive_int, help="global batch size (default: the preset's; synthetic 8, others 1)")
    a("--steps", type=positive_int, help=f"total optimizer steps of the run (default: {DEFAULT_SYNTHETIC_STEPS} for "
      "synthetic; other datasets need --steps or --epochs)")
    a("--epochs", type=positive_int, help="total epochs instead of --steps (steps = epochs x samples // batch)")
    a("--out", help="run directory (default: runs/<dataset>-<norm>)")
    a("--resume", action="store_true", help="continue the run in --out; fail if it has no checkpoint "
      "(without it, an existing checkpoint is continued too)")
    a("--vgg-weights", metavar="FILE", help="local VGG19 notop Keras weights (.h5) for the perceptual loss; "
      "without it the VGG loss is off")
    a("--use-vae", action="store_true", help="train with the image encoder (z from the style of the real image)")
    a("--strategy", default="auto", choices=STRATEGIES,
      help="auto: MultiWorkerMirrored if TF_CONFIG lists several workers, Mirrored if several GPUs, else one device")
    a("--peer-timeout", type=float, default=600, metavar="SECONDS",
      help="multi-worker: stop with an error naming the task when a peer in TF_CONFIG does not answer in time")
    a("--seed", type=int, default=0, help="seed for data order, augmentation, init and sampling")
    a("--g-lr", type=float, default=o.g_lr, help="generator learning rate (TTUR)")
    a("--d-lr", type=float, default=o.d_lr, help="discriminator learning rate (TTUR)")
    a("--beta1", type=float, default=o.beta1, help="Adam beta1")
    a("--beta2", type=float, default=o.beta2, help="Adam beta2")
    a("--decay-start", type=int, metavar="STEP", help="decay both learning rates linearly to 0 from STEP to --steps")
    a("--lambda-feat", type=float, default=o.lambda_feat, help="feature matching weight")
    a("--lambda-vgg", type=float, default=o.lambda_vgg, help="VGG loss weight")
    a("--lambda-kld", type=float, default=o.lambda_kld, help="KL divergence weight in VAE mode")
    a("--checkpoint-every", type=positive_int, default=m.checkpoint_every, metavar="N",
      help="checkpoint every N steps (and at the end)")
    a("--log-every", type=positive_int, default=m.log_every, metavar="N", help="TensorBoard scalars every N steps")
    a("--image-every", type=positive_int, default=m.image_every, metavar="N", help="TensorBoard sample grid every N steps")
    a("--cache", metavar="DIR", help="read the training split from this prepared cache (python -m train.prepare) "
      "instead of decoding the files")
    a("--skip-bad-samples", action="store_true",
      help="report and skip unreadable / mismatched / out-of-range samples instead of stopping")
    a("--label-nc", help="custom datasets: number of classes (without don't-care), or 'auto' to scan the labels")
    a("--contain-dontcare", action="store_true", help="custom datasets: label 255 is a don't-care class")
    a("--palette", metavar="FILE",
      help="custom datasets with RGB colour masks: colour -> class file (JSON or 'r g b class' lines)")
    a("--use-instance", action="store_true", help="custom datasets: read instance maps from <dataroot>/instances")
    a("--jit-compile", action="store_true",
      help="compile the train step with XLA (GPU hosts; a resume may turn it on or off)")
    a("--mixed-precision", nargs="?", const="float16", choices=("float16", "bfloat16"),
      help="mixed-precision compute: float16 with loss scaling (the bare flag; GPUs), or bfloat16 "
           "(TPUs, CPUs with AVX512-BF16); variables stay float32")
    g = p.add_argument_group("evaluation during training (FID / KID, mIoU; see python -m evaluate)")
    g.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="score the generator every N steps on the validation split (the training split, "
                        "unaugmented, when there is none); 0: never. The best by FID is kept in <out>/best/")
    g.add_argument("--eval-images", type=positive_int, default=500, metavar="N", help="images scored each time")
    g.add_argument("--inception-weights", metavar="FILE",
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a local file)")
    g.add_argument("--real-stats", metavar="FILE",
                   help="real statistics .npz (default: computed once from the training split)")
    g.add_argument("--segmenter", metavar="FILE", help="exported segmenter for mIoU (python -m evaluate run --help)")
    g.add_argument("--segmenter-size", type=int, nargs=2, metavar=("H", "W"), help="its input size")
    g.add_argument("--class-map", metavar="FILE", help="JSON list: the dataset class of each segmenter class")
    a("--synthetic-length", type=positive_int, default=d.synthetic_length, help="samples per epoch of the synthetic dataset")
    return p


def resolve(args):
    """argparse namespace -> (RunConfig, out, strategy, resume_required). Every problem
    found in the flags is reported at once."""
    import dataclasses

    from clade_tf.config import (
        PROCEDURAL_DATASETS,
        ConfigError,
        EvalConfig,
        MonitorConfig,
        OptimConfig,
    )
    from clade_tf.presets import get_preset, resolve_preset
    from train.run import UsageError

    problems = []
    custom = args.dataset == "custom"
    if not custom:
        given = [f"--{f.replace('_', '-')}" for f in ("label_nc", "palette", "contain_dontcare", "use_instance")
                 if getattr(args, f)]
        if given:
            problems.append(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --dataset custom only; "
                            f"{args.dataset} has {get_preset(args.dataset).label_nc} classes fixed by the preset")
    if args.dataset not in PROCEDURAL_DATASETS and not args.dataroot:
        problems.append(f"--dataset {args.dataset} needs --dataroot DIR")
    elif args.dataroot and args.dataset in PROCEDURAL_DATASETS:
        problems.append(f"--dataroot {args.dataroot}: --dataset {args.dataset} is generated in memory and reads "
                        f"no folder; give --dataset with the folder's layout ({', '.join(datasets(True))})")
    elif args.dataroot and not os.path.isdir(args.dataroot):
        problems.append(f"--dataroot {args.dataroot} does not exist")
    if args.cache and args.dataset in PROCEDURAL_DATASETS:
        problems.append(f"--cache: {args.dataset} is generated in memory, there is nothing to prepare")
    elif args.cache and not os.path.isdir(args.cache):
        problems.append(f"--cache {args.cache}: not found (python -m train.prepare writes it)")
    if args.steps is not None and args.epochs is not None:
        problems.append("give --steps or --epochs, not both")
    elif args.steps is None and args.epochs is None and args.dataset not in PROCEDURAL_DATASETS:
        problems.append(f"--dataset {args.dataset}: give --steps or --epochs")
    if args.vgg_weights and not os.path.isfile(args.vgg_weights):
        problems.append(f"VGG19 weights file not found: {args.vgg_weights!r}; pass --vgg-weights with a local "
                        "copy of vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (nothing is downloaded)")
    if args.eval_every < 0:
        problems.append(f"--eval-every {args.eval_every}: expected >= 0 (0: never)")
    if args.eval_every and not args.inception_weights:
        problems.append("--eval-every needs --inception-weights FILE (pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth, a local file)")
    for flag in ("inception_weights", "real_stats", "segmenter", "class_map"):
        value = getattr(args, flag)
        if value and not os.path.exists(value):
            problems.append(f"--{flag.replace('_', '-')} {value}: not found")
    if custom and args.label_nc is None:
        problems.append("--dataset custom needs --label-nc N (or --label-nc auto to scan the labels)")
    if problems:
        raise UsageError("; ".join(problems))

    label_nc = resolve_label_nc(args) if custom else None
    try:
        preset = resolve_preset(args.dataset, label_nc, args.contain_dontcare, args.use_instance)
        batch = args.batch_size or preset.batch_size
        optim = OptimConfig(batch_size=batch, steps=args.steps or DEFAULT_SYNTHETIC_STEPS, g_lr=args.g_lr,
                            d_lr=args.d_lr, beta1=args.beta1, beta2=args.beta2, decay_start=args.decay_start,
                            lambda_feat=args.lambda_feat, lambda_vgg=args.lambda_vgg, lambda_kld=args.lambda_kld,
                            vgg_weights=args.vgg_weights, mixed_precision=args.mixed_precision,
                            jit_compile=args.jit_compile)
        monitor = MonitorConfig(log_every=args.log_every, image_every=args.image_every,
                                checkpoint_every=args.checkpoint_every)
        cfg = preset.run_config(
            args.norm, dataroot=args.dataroot, use_vae=args.use_vae, param_free_norm=args.param_free_norm,
            optim=optim, monitor=monitor, seed=args.seed,
            data={"palette": args.palette, "skip_bad_samples": args.skip_bad_samples,
                  "synthetic_length": args.synthetic_length, "cache": args.cache},
            evaluation=EvalConfig(every=args.eval_every, images=args.eval_images,
                                  inception_weights=args.inception_weights, real_stats=args.real_stats,
                                  segmenter=args.segmenter, segmenter_size=args.segmenter_size,
                                  class_map=args.class_map))
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.epochs is not None:
        from clade_tf.data import pipeline, sources

        source = sources.make_source(cfg.data, cfg.generator, cfg.seed)
        steps = args.epochs * pipeline.steps_per_epoch(source, batch)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=steps))
    out = args.out or os.path.join("runs", f"{args.dataset}-{args.norm}")
    return cfg, out, args.strategy, args.resume


def resolve_label_nc(args):
    from clade_tf.data import folders
    from train.run import UsageError

    if args.label_nc != "auto":
        try:
            n = int(args.label_nc)
        except ValueError:
            raise UsageError(f"--label-nc {args.label_nc!r}: expected an integer or 'auto'") from None
        if n < 1:
            raise UsageError(f"--label-nc {n}: expected >= 1")
        return n
    samples, _ = folders.list_samples("custom", args.dataroot, "train", False)
    palette = folders.load_palette(args.palette) if args.palette else None
    classes = folders.scan_label_classes(samples, palette, skip_bad=args.skip_bad_samples)
    if args.contain_dontcare:
        classes = [c for c in classes if c != 255]
    n = max(classes) + 1 if classes else 1
    print(f"--label-nc auto: {len(classes)} classes found in {len(samples)} label maps: "
          f"{classes[:50]}{' ...' if len(classes) > 50 else ''}; using label_nc={n}")
    return n


def main(argv=None):
    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    import tensorflow as tf

    from clade_tf.data.folders import BadSample
    from clade_tf.gan import NonFiniteError
    from clade_tf.rundir import CheckpointWriteError, RunLockedError
    from train.run import UsageError, run

    args = build_parser().parse_args(argv)
    try:
        cfg, out, strategy, resume_required = resolve(args)
        summary = run(cfg, out, strategy=strategy, resume_required=resume_required,
                      peer_timeout=args.peer_timeout)
    except CheckpointWriteError as e:
        print(f"error: {e.strerror}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # h5py's objects of a failed write crash the interpreter's shutdown; nothing is left to save
        os._exit(1)
    except tf.errors.InvalidArgumentError as e:  # a bad sample met inside the tf.data stream
        msg = e.message.strip().splitlines()
        bad = [m for m in msg if "BadSample" in m or "label value" in m or "unreadable" in m]
        print(f"error: {(bad or msg)[0]}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        return exit_code(e, usage=(UsageError, BadSample), failures=(NonFiniteError, RunLockedError))
    if summary.get("nothing_to_do"):
        print(f"{summary['run_dir']} is already at step {summary['final_step']} of --steps "
              f"{summary['total_steps']}: nothing to do (a larger --steps extends the run)")
        return 0
    print(f"done: {summary['final_step']} steps in {summary['run_dir']} "
          f"({summary['steps_per_second']:.2f} steps/s)")
    if summary.get("best_fid") is not None:
        print(f"best FID {summary['best_fid']:.3f} (generator in {summary['run_dir']}/best/)")
    if summary.get("quality_final") is not None:
        init = summary.get("quality_init")
        print(f"{summary['quality_name']}: {init if init is None else round(init, 3)} at init -> "
              f"{summary['quality_final']:.3f} now")
    return 0
