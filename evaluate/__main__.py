"""Score generated images as the papers do: FID and KID on the FID Inception's features,
mIoU and pixel accuracy with a semantic segmenter.

    python -m evaluate fid PATH_A PATH_B --inception-weights pt_inception-2015-12-05-6726825d.pth [--json]
    python -m evaluate stats FOLDER --out stats.npz --inception-weights FILE [--size H W]
    python -m evaluate run --run runs/synthetic-clade --inception-weights FILE --out evals/synthetic-clade
    python -m evaluate run --model exports/ade20k/model_fp32.tflite --dataset ade20k --dataroot DIR \\
        --inception-weights FILE --real-stats ade20k_train_256.npz [--segmenter seg.onnx --segmenter-size 256 256] \\
        --out evals/ade
    python -m evaluate run --run runs/synthetic-clade --segmenter seg.onnx --out evals/miou   (mIoU only)

PATH_A / PATH_B are folders of images or statistics files (.npz with mu and sigma, the
layout of pytorch-fid, so statistics work in both directions). Images are resized to
299x299 inside the network, as pytorch-fid does. The FID Inception weights are the
file pytorch-fid uses (pt_inception-2015-12-05-6726825d.pth, from pytorch-fid's GitHub
releases); it is read from the local file you name, never downloaded. `run` scores FID / KID
with --inception-weights and mIoU with --segmenter: one of the two is enough (without the
Inception, FID and KID are skipped and metrics.json says why).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class UsageError(Exception):
    pass


def build_parser():
    from clade_tf.cli import ArgumentParser, HelpFormatter, positive_int
    from clade_tf.config import SEGMENTER_RANGES, EvalConfig
    from clade_tf.presets import PRESETS

    e = EvalConfig()
    p = ArgumentParser(prog="python -m evaluate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, required=True):
        q.add_argument("--inception-weights", required=required, metavar="FILE",
                       help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a local file)" + (
                           "" if required else "; without it only the --segmenter's scores, no FID / KID"))
        q.add_argument("--batch-size", type=positive_int, default=50, help="images per Inception batch")

    f = sub.add_parser("fid", help="FID (and KID) between two image folders or statistics files",
                       formatter_class=HelpFormatter)
    f.add_argument("path_a", help="folder of images, or .npz statistics")
    f.add_argument("path_b", help="folder of images, or .npz statistics")
    common(f)
    f.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("stats", help="real statistics (mu, sigma) of a folder of images",
                       formatter_class=HelpFormatter)
    s.add_argument("folder", help="folder of images (e.g. the training images)")
    s.add_argument("--out", required=True, help="statistics file to write (.npz)")
    s.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="resize every image to H x W first (bicubic), as CLADE does with its training images "
                        "(256 256; Cityscapes 256 512)")
    common(s)

    r = sub.add_parser("run", help="generate a split through a generator and score it",
                       formatter_class=HelpFormatter)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory of python -m train (or export.from_torch)")
    src.add_argument("--model", help="exported model (export directory or its .tflite / .onnx / saved_model)")
    r.add_argument("--checkpoint", type=int, metavar="STEP", help="with --run: this checkpoint (default: newest)")
    r.add_argument("--dataset", choices=sorted(PRESETS), help="dataset (default with --run: the run's)")
    r.add_argument("--dataroot", help="dataset folder (default with --run: the run's)")
    r.add_argument("--split", default=e.split, choices=("val", "train"), help="images to generate")
    r.add_argument("--images", type=int, default=None, help="score the first N images of the split (default: all)")
    r.add_argument("--real-stats", metavar="FILE", help="real statistics .npz (default: computed from the training "
                   "split resized to the generator's size; then KID is reported too)")
    r.add_argument("--real-images", type=int, default=e.real_images,
                   help="training images for the real statistics when they are computed")
    r.add_argument("--segmenter", metavar="FILE", help="exported segmenter for mIoU (image in, scores [N,H,W,C] out)")
    r.add_argument("--segmenter-size", type=int, nargs=2, metavar=("H", "W"), help="its input size")
    r.add_argument("--segmenter-range", default=e.segmenter_range, choices=SEGMENTER_RANGES,
                   help="pixel range it expects")
    r.add_argument("--class-map", metavar="FILE", help="JSON list: the dataset class of each segmenter class")
    r.add_argument("--seed", type=int, default=0, help="seed of z for VAE generators")
    r.add_argument("--out", required=True, help="folder to write (metrics.json, samples.png)")
    r.add_argument("--force", action="store_true", help="replace an earlier evaluation in --out")
    common(r, required=False)
    r.set_defaults(batch_size=e.batch_size)
    return p


class Progress:
    """A progress bar over images."""

    def __init__(self, what):
        self.what, self.bar = what, None

    def __call__(self, done, total):
        import keras

        if self.bar is None:
            print(self.what)
            self.bar = keras.utils.Progbar(total, unit_name="image")
        self.bar.update(done, finalize=done >= total)


def folder_features(model, folder, batch_size, size=None):
    """`(features, image count)` of the images in `folder` (resized to `size` first when
    given), with a progress bar."""
    from clade_tf.metrics import extract_features, image_files, image_folder_dataset

    n = len(image_files(folder))
    progress = Progress(f"{folder}: {n} images" + (f", resized to {size[0]}x{size[1]}" if size else ""))
    seen = 0

    def counted(ds):
        nonlocal seen
        for batch in ds:
            seen += int(batch.shape[0])
            progress(seen, n)
            yield batch

    return extract_features(model, counted(image_folder_dataset(folder, batch_size, size))), n


def features_or_stats(path, model, batch_size):
    """`(features or None, mu, sigma, n)` of a folder of images or a statistics file."""
    from clade_tf.metrics import (
        load_stats,
        statistics,
    )

    if os.path.isfile(path) and path.endswith(".npz"):
        mu, sigma = load_stats(path)
        return None, mu, sigma, None
    if not os.path.isdir(path):
        raise UsageError(f"{path}: expected a folder of images or a .npz statistics file")
    features, n = folder_features(model, path, batch_size)
    mu, sigma = statistics(features)
    return features, mu, sigma, n


def cmd_fid(args):
    from clade_tf.metrics import (
        fid_inception,
        frechet_distance,
        kernel_inception_distance,
    )

    model = fid_inception(args.inception_weights)
    fa, mu_a, sig_a, n_a = features_or_stats(args.path_a, model, args.batch_size)
    fb, mu_b, sig_b, n_b = features_or_stats(args.path_b, model, args.batch_size)
    out = {"fid": frechet_distance(mu_a, sig_a, mu_b, sig_b), "kid_mean": None, "kid_std": None,
           "n_a": n_a, "n_b": n_b}
    if fa is not None and fb is not None:
        out["kid_mean"], out["kid_std"] = (float(v) for v in kernel_inception_distance(
            fa, fb, subset_size=min(1000, len(fa), len(fb))))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"FID: {out['fid']:.4f}")
        if out["kid_mean"] is not None:
            print(f"KID: {out['kid_mean']:.5f} +- {out['kid_std']:.5f}")
        else:
            print("KID: needs two image folders (a statistics file holds no features)")
    return 0


def cmd_stats(args):
    from clade_tf.metrics import (
        fid_inception,
        save_stats,
        statistics,
    )
    from clade_tf.outdir import check_writable

    check_writable(os.path.dirname(os.path.abspath(args.out)), flag=f"--out {args.out}: the folder")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; name the .npz file to write")
    model = fid_inception(args.inception_weights)
    features, n = folder_features(model, args.folder, args.batch_size, args.size)
    mu, sigma = statistics(features)
    tmp = f"{args.out}.tmp-{os.getpid()}.npz"
    try:
        save_stats(tmp, mu, sigma)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {args.out} (mu, sigma of {n} images)")
    return 0


def load_model(args):
    """`(generate fn, GeneratorConfig, DataConfig, description of the weights)`."""
    import dataclasses

    from clade_tf.evaluation import keras_generator_fn, runner_generator_fn
    from clade_tf.outdir import sha256
    from clade_tf.presets import resolve_preset
    from clade_tf.rundir import RunDirectory

    if args.run:
        run = RunDirectory(args.run)
        g, cfg = run.load_generator(args.checkpoint)
        data = cfg.data
        if args.dataset and args.dataset != data.dataset:
            raise UsageError(f"--dataset {args.dataset}: the run was trained on {data.dataset}")
        if args.dataroot:
            data = dataclasses.replace(data, dataroot=args.dataroot)
        weights = run.generator_weights(args.checkpoint)
        return keras_generator_fn(g), g.config, data, {"run": args.run, "weights": weights, "sha256": sha256(weights)}
    from clade_tf.config import GeneratorConfig
    from clade_tf.export.exportdir import find_model
    from clade_tf.export.runtime import load_runner

    path, export = find_model(args.model)
    if export is None:
        raise UsageError(f"--model {path}: no report.json beside it (the generator's configuration); name the "
                         "export directory of python -m export, or copy its report.json beside the model")
    gen_cfg = GeneratorConfig.from_dict(export.generator)
    if not args.dataset:
        raise UsageError("--model needs --dataset NAME (the data the generator was trained on)")
    # a custom dataset's classes and don't-care class are the export's (recorded from the
    # run's DataConfig.dontcare_class); a fixed preset has its own
    has_dontcare = export.dontcare_class is not None
    custom = args.dataset == "custom"
    preset = resolve_preset(args.dataset, gen_cfg.num_classes - has_dontcare if custom else None,
                            has_dontcare and custom, gen_cfg.use_instance and custom)
    data = preset.data_config(dataroot=args.dataroot)
    if "dontcare_class" in export.contract and data.dontcare_class != export.dontcare_class:
        raise UsageError(f"--dataset {args.dataset}: don't-care class {data.dontcare_class}, but the export's is "
                         f"{export.dontcare_class} ({export.path}/report.json); name the dataset the generator "
                         "was trained on")
    runner = load_runner(path)
    return runner_generator_fn(runner, export.inputs), gen_cfg, data, {
        "model": path, "sha256": sha256(path)}


def cmd_run(args):
    from clade_tf import viz
    from clade_tf.config import EvalConfig
    from clade_tf.evaluation import Evaluator
    from clade_tf.outdir import check_output, replace_directory

    if not args.inception_weights and not args.segmenter:
        raise UsageError("nothing to score: give --inception-weights FILE (FID / KID), --segmenter FILE (mIoU), "
                         "or both")
    if args.real_stats and not args.inception_weights:
        raise UsageError(f"--real-stats {args.real_stats}: FID statistics need --inception-weights FILE too")
    check_output(args.out, "evaluation", args.force)  # before minutes of work
    generate, gen_cfg, data, weights = load_model(args)
    cfg = EvalConfig(images=args.images or 10**9, split=args.split, inception_weights=args.inception_weights,
                     real_stats=args.real_stats, real_images=args.real_images, segmenter=args.segmenter,
                     segmenter_size=args.segmenter_size, segmenter_range=args.segmenter_range,
                     class_map=args.class_map, batch_size=args.batch_size)
    evaluator = Evaluator(cfg, data, gen_cfg, seed=args.seed)
    evaluator.prepare(Progress("real statistics from the training split"))
    metrics, grid = evaluator.evaluate(generate, Progress(f"generating the {args.split} split"))
    record = {**metrics, "generator": weights, "dataset": data.dataset, "dataroot": data.dataroot,
              "seed": args.seed, **evaluator.provenance()}
    with replace_directory(args.out, "evaluation", args.force, inputs=(args.run, args.model)) as tmp:
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(record, f, indent=2)
        viz.save_png(os.path.join(tmp, "samples.png"), grid)
    scores = []
    if metrics["fid"] is not None:
        scores.append(f"FID {metrics['fid']:.3f}")
    if metrics.get("kid_mean") is not None:
        scores.append(f"KID {metrics['kid_mean']:.5f} +- {metrics['kid_std']:.5f}")
    if "miou" in metrics:
        scores.append(f"mIoU {metrics['miou']:.4f}  pixel accuracy {metrics['pixel_accuracy']:.4f}")
    print(f"{'  '.join(scores)}  ({metrics['images']} images)")
    if metrics["fid"] is None:
        print(f"FID and KID skipped: {metrics['skipped']['fid']}")
    print(f"wrote {args.out} (metrics.json, samples.png)")
    return 0


def main(argv=None):
    from clade_tf.cli import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    args = build_parser().parse_args(argv)
    from clade_tf.cli import exit_code
    from clade_tf.config import ConfigError
    from clade_tf.metrics import WeightsError
    from clade_tf.outdir import OutputError

    try:
        return {"fid": cmd_fid, "stats": cmd_stats, "run": cmd_run}[args.command](args)
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        return exit_code(e, usage=(UsageError, WeightsError, OutputError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())
