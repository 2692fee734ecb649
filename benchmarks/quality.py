r"""Image quality per normalization mode on `synthetic-scenes`: the quality half of the
CLADE paper's claim (CLADE's images as good as SPADE's; CLADE-ICPE adds back the
positional information a per-class lookup cannot carry), on this machine.

    python -m benchmarks.quality [--dataset synthetic-scenes] [--modes none,clade,clade-icpe,spade] \
        [--seeds 2] [--steps 400] [--batch-size 8] [--eval-images 256] [--json] [--plot FILE] \
        [--save FILE]
    python -m benchmarks.quality --train-segmenter [--segmenter FILE]

Every (seed, mode) pair trains the GAN that `python -m train --dataset synthetic-scenes
--norm MODE --seed SEED` builds, with the same batch, steps and losses (hinge GAN +
discriminator feature matching; no VGG, whose weights are not here), then generates the
first `--eval-images` samples of the validation stream (the same label maps for every
mode and seed) and scores them with `clade_tf.metrics.scenes`: mIoU and pixel accuracy
of the dataset's own segmenter (trained on real images only), the segmenter-feature
Fréchet distance to real images (`seg_fd`; not Inception FID), and one correlation per
kind of structure. The real images of the same label maps are the ceiling row. Seeds
are the outer loop, so an interrupted run has every mode at the same number of seeds;
`--save` rewrites the JSON after every run.

`none` is the backbone with plain affine normalization: it sees the label map only
through the first layer's input, downsampled to the latent size (2x2 at 64x64), so it
is close to label-blind. `seconds_per_step` is the wall time of the training steps
after the first (which traces), data loading included.
"""

import json
import os
import sys
import time

from benchmarks.common import add_json_flag, machine, run_benchmark, split
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODES = ("none", "clade", "clade-icpe", "spade")
# the weights shipped in the package (clade_tf.resources): --train-segmenter rewrites them in the checkout
DEFAULT_SEGMENTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "clade_tf", "resources", "segmenters", "synthetic-scenes-64.weights.h5")
REFERENCE_SEED = 424_242  # the real images of seg_fd's reference statistics
EVAL_SEED = 0  # the validation stream every mode and seed is scored on
GRID_ROWS = 6


def train_segmenter(args):
    import tensorflow as tf

    from clade_tf.metrics import scenes as ms
    from clade_tf.outdir import sha256

    tf.config.experimental.enable_op_determinism()
    t0 = time.perf_counter()
    model = ms.train_segmenter(progress=lambda s, loss: print(f"segmenter step {s}: loss {loss:.4f} "
                                                              f"({time.perf_counter() - t0:.0f} s)", flush=True))
    os.makedirs(os.path.dirname(os.path.abspath(args.segmenter)), exist_ok=True)
    tmp = f"{args.segmenter}.tmp-{os.getpid()}.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, args.segmenter)
    print(f"wrote {args.segmenter} (sha256 {sha256(args.segmenter)}) in {time.perf_counter() - t0:.0f} s")


def eval_set(data, gen_cfg, n):
    """The first `n` validation samples as `(batches for the generator, labels, instances, real uint8)`."""
    import numpy as np

    from clade_tf import viz
    from clade_tf.data import sources
    from clade_tf.evaluation import split_batches

    source = sources.make_source(data, gen_cfg, EVAL_SEED, phase="val")
    batches = list(split_batches(source, gen_cfg, 32, n, EVAL_SEED))
    labels = np.concatenate([b["label"] for b in batches])
    # the structure scores need the instance maps; the scenes generators all take them
    instances = np.concatenate([b["instance"] for b in batches])
    real = viz.to_uint8(np.concatenate([b["image"] for b in batches]))
    return batches, labels, instances, real


def train_and_score(preset, mode, seed, args, scorer):
    """Trains one GAN and scores it: `(metrics, seconds_per_step, train_seconds, samples uint8)`."""
    import keras
    import numpy as np

    from clade_tf import viz
    from clade_tf.config import OptimConfig
    from clade_tf.data import sources
    from clade_tf.evaluation import keras_generator_fn
    from clade_tf.gan import build_gan, non_finite_weights

    keras.backend.clear_session()
    cfg = preset.run_config(mode, seed=seed, optim=OptimConfig(batch_size=args.batch_size, steps=args.steps))
    gan = build_gan(cfg)
    source = sources.make_source(cfg.data, cfg.generator, seed)
    ds = sources.make_training_dataset(source, cfg.generator, args.batch_size, seed, num_steps=args.steps)
    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    gan.fit(ds, epochs=1, steps_per_epoch=args.steps, callbacks=[Clock()], verbose=0, shuffle=False)
    train_seconds = time.perf_counter() - t0
    if non_finite_weights(gan.generator):
        raise FloatingPointError(f"{mode} seed {seed}: the generator's weights are not finite")
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else train_seconds
    batches, labels, instances, _ = eval_set(cfg.data, cfg.generator, args.eval_images)
    generate = keras_generator_fn(gan.generator)
    fake = viz.to_uint8(np.concatenate([generate(b) for b in batches]))
    return scorer.score(fake, labels, instances), per_step, train_seconds, fake[:GRID_ROWS]


def summarize(per_seed):
    import numpy as np

    from clade_tf.metrics.scenes import METRICS

    mean = {m: float(np.nanmean([r[m] for r in per_seed])) for m in METRICS}
    std = {m: float(np.nanstd([r[m] for r in per_seed])) for m in METRICS}
    return mean, std


def bench_quality(args, progress=print):
    import numpy as np

    from clade_tf import viz
    from clade_tf.data import scenes
    from clade_tf.metrics import scenes as ms
    from clade_tf.outdir import sha256
    from clade_tf.presets import get_preset
    from clade_tf.profiling import generator_profile

    preset = get_preset(args.dataset)
    segmenter = ms.load_segmenter(args.segmenter)
    reference = viz.to_uint8(np.stack([scenes.make_sample(REFERENCE_SEED, i, preset.image_height,
                                                          preset.image_width)["image"]
                                       for i in range(args.eval_images)]))
    scorer = ms.SceneScorer(segmenter, reference)
    first = preset.run_config(args.modes[0])
    _, labels, instances, real = eval_set(first.data, first.generator, args.eval_images)
    real_scores = scorer.score(real, labels, instances)
    result = {"dataset": args.dataset, "steps": args.steps, "batch_size": args.batch_size,
              "eval_images": len(labels), "seeds": list(range(args.seeds)), "machine": machine(),
              "segmenter": {"path": os.path.relpath(args.segmenter), "sha256": sha256(args.segmenter)},
              "real": real_scores, "modes": {}}
    for mode in args.modes:
        prof = generator_profile(preset.generator_config(mode))
        result["modes"][mode] = {"params": prof["params"], "macs": prof["macs"], "per_seed": []}
    samples = {"label": labels[:GRID_ROWS], "real": real[:GRID_ROWS]}
    progress(f"real images: {format_metrics(real_scores)}")
    for seed in range(args.seeds):
        for mode in args.modes:
            metrics, per_step, seconds, fake = train_and_score(preset, mode, seed, args, scorer)
            row = result["modes"][mode]
            row["per_seed"].append({"seed": seed, "seconds_per_step": per_step, "train_seconds": seconds,
                                    **metrics})
            row["mean"], row["std"] = summarize(row["per_seed"])
            row["seconds_per_step"] = float(np.median([r["seconds_per_step"] for r in row["per_seed"]]))
            if seed == 0:
                samples[mode] = fake
            progress(f"{mode} seed {seed}: {per_step:.2f} s/step, {format_metrics(metrics)}")
            if args.save:
                write_json(args.save, result)
    result["samples"] = samples  # arrays for the figure; dropped from the JSON
    return result


def format_metrics(m):
    return ", ".join(f"{k} {m[k]:.3f}" for k in ("miou", "pixel_accuracy", "seg_fd", "dome_shading",
                                                 "sky_gradient"))


def write_json(path, result):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({k: v for k, v in result.items() if k != "samples"}, f, indent=1)
    os.replace(tmp, path)


COLUMNS = (("miou", "mIoU"), ("pixel_accuracy", "pix acc"), ("seg_fd", "seg FD"), ("sky_gradient", "sky"),
           ("dome_shading", "dome"), ("orb_radial", "orb"), ("road_lane", "lane"),
           ("building_edges", "edges"), ("thin_iou", "thin"), ("texture_iou", "texture"))


def format_table(result, markdown=False):
    head = ["mode", "params", "MACs", "s/step"] + [c[1] for c in COLUMNS]
    rows = [["real", "", "", ""] + [f"{result['real'][k]:.3f}" for k, _ in COLUMNS]]
    for mode, r in result["modes"].items():
        if not r["per_seed"]:
            continue
        spread = [f"{r['mean'][k]:.3f}±{r['std'][k]:.3f}" if len(r["per_seed"]) > 1 else f"{r['mean'][k]:.3f}"
                  for k, _ in COLUMNS]
        rows.append([mode, f"{r['params']:,}", f"{r['macs'] / 1e6:.1f} M", f"{r['seconds_per_step']:.2f}"] + spread)
    n = max((len(r["per_seed"]) for r in result["modes"].values()), default=0)
    title = (f"quality on {result['dataset']}: {result['steps']} steps at batch {result['batch_size']}, "
             f"{n} seed(s) (mean±std), {result['eval_images']} validation images, {result['machine']}")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join([title, "", *lines, *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*head), *(fmt.format(*r) for r in rows)])


def plot_quality(result, path):
    """A bar chart (one group per metric, one bar per mode with its seeds' range, the
    real images as a line) at `path`, and the sample grid at `<path>-samples.png`."""
    import numpy as np
    from PIL import Image, ImageDraw

    from clade_tf import viz
    from clade_tf.data import scenes

    modes = [m for m, r in result["modes"].items() if r["per_seed"]]
    colours = {"none": (150, 150, 150), "clade": (40, 120, 200), "clade-icpe": (60, 170, 120),
               "spade": (210, 90, 60)}
    metrics = [(k, n) for k, n in COLUMNS if k != "seg_fd"]
    bar, gap, left, h_plot = 14, 18, 40, 260
    w = left + len(metrics) * (len(modes) * bar + gap) + 150
    img = Image.new("RGB", (w, h_plot + 90), "white")
    dr = ImageDraw.Draw(img)
    dr.text((10, 8), f"{result['dataset']}: {result['steps']} steps, {len(result['seeds'])} seeds "
                     "(bar: mean, whisker: seeds' range; black line: real images)", fill="black")
    y0 = 30 + h_plot  # value 0; 1 at 30

    def ypos(v):
        return y0 - int(h_plot * max(min(v, 1.0), -0.1))

    for v in (0.0, 0.5, 1.0):
        dr.line([left, ypos(v), w - 150, ypos(v)], fill=(220, 220, 220))
        dr.text((5, ypos(v) - 6), f"{v:.1f}", fill="black")
    x = left
    for k, name in metrics:
        for m in modes:
            r = result["modes"][m]
            vals = [s[k] for s in r["per_seed"] if not np.isnan(s[k])]
            if vals:
                dr.rectangle([x, min(ypos(np.mean(vals)), y0), x + bar - 3, max(ypos(np.mean(vals)), y0)],
                             fill=colours.get(m, (100, 100, 100)))
                dr.line([x + bar // 2 - 1, ypos(min(vals)), x + bar // 2 - 1, ypos(max(vals))], fill="black")
            x += bar
        real = result["real"][k]
        dr.line([x - len(modes) * bar - 2, ypos(real), x, ypos(real)], fill="black", width=2)
        dr.text((x - len(modes) * bar, y0 + 8), name, fill="black")
        x += gap
    for i, m in enumerate(modes):
        dr.rectangle([w - 140, 40 + 18 * i, w - 128, 52 + 18 * i], fill=colours.get(m, (100, 100, 100)))
        dr.text((w - 122, 40 + 18 * i), m, fill="black")
    viz.save_png(path, np.asarray(img))
    s = result.get("samples")
    if s:
        cols = [viz.colorize(s["label"], scenes.PALETTE)] + [s[m] for m in modes if m in s] + [s["real"]]
        n, h, wd = s["label"].shape
        grid = np.full((n * (h + 2) - 2, len(cols) * (wd + 2) - 2, 3), 255, np.uint8)
        for j, col in enumerate(cols):
            for i in range(n):
                grid[i * (h + 2):i * (h + 2) + h, j * (wd + 2):j * (wd + 2) + wd] = col[i]
        grid = np.asarray(Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST))
        viz.save_png(os.path.splitext(path)[0] + "-samples.png", grid)


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    p.add_argument("--dataset", default="synthetic-scenes", choices=["synthetic-scenes"],
                   help="procedural dataset with a segmenter and structure scores")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated norm modes")
    p.add_argument("--seeds", type=int, default=2, help="training seeds 0..N-1 per mode")
    p.add_argument("--steps", type=int, default=400, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("--eval-images", type=int, default=256, help="validation images scored per run")
    p.add_argument("--segmenter", default=DEFAULT_SEGMENTER, help="segmenter weights (.weights.h5)")
    p.add_argument("--train-segmenter", action="store_true",
                   help="train the segmenter on real images (deterministic) and write it to --segmenter")
    add_json_flag(p)
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--plot", metavar="FILE", help="bar chart PNG (and FILE-samples.png, a sample grid per mode)")
    p.add_argument("--save", metavar="FILE", help="write the JSON here after every run")
    args = p.parse_args(argv)
    args.modes = split(args.modes)
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes {','.join(bad) or '(empty)'}: expected some of {','.join(MODES)}")
    for name in ("seeds", "steps", "batch_size", "eval_images"):
        if getattr(args, name) < (2 if name in ("steps", "eval_images") else 1):
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: too small")
    if not args.train_segmenter and not os.path.isfile(args.segmenter):
        p.error(f"--segmenter {args.segmenter}: not found (python -m benchmarks.quality --train-segmenter "
                "writes it)")
    return args


def run(args):
    """`--train-segmenter` (nothing to print), or the benchmark, plotted with `--plot`; its
    progress lines go to stderr with `--json`."""
    if args.train_segmenter:
        train_segmenter(args)
        return None
    quiet = args.json
    result = bench_quality(args, progress=(lambda m: print(m, file=sys.stderr, flush=True)) if quiet else
                           (lambda m: print(m, flush=True)))
    if args.plot:
        plot_quality(result, args.plot)
    result.pop("samples")  # the figure's arrays, not a result
    return result


def main(argv=None):
    return run_benchmark(argv, parse_args, run, format_table, table_options=lambda args: {"markdown": args.markdown})


if __name__ == "__main__":
    sys.exit(main())
