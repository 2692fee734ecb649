r"""Images per second delivered by the training data pipeline alone (no model), on this machine.

    python -m benchmarks.pipeline --dataset ade20k [--dataroot DIR] [--cache CACHE] [--icpe] \
        [--batches 30] [--batch-size 16] [--json]
    python -m benchmarks.pipeline --compare [--dataroot DIR] [--json]   # every path in one run

Without --dataroot, an ADE20K-sized folder is made in a temporary directory (`--count`
pairs of 512x384 JPEG images and PNG label maps of about 190 regions over 150 classes,
Voronoi cells; deterministic). `--cache` reads a prepared cache (`python -m train.prepare`);
with `--compare` one is prepared (timed) in the temporary directory. The pipeline is
`python -m train`'s (`clade_tf.data.sources.make_training_dataset`): the raw-file path
decodes with PIL and crops in numpy under the GIL; the cache path reads and crops in
TensorFlow ops. `--icpe` includes the positional maps (a CLADE-ICPE generator's input).
Timed: `--batches` batches after `--warmup` batches; `--json` prints
`{"images_per_second", "cores", "images_per_second_per_core", ...}` (with --compare, one
such object per path under "paths").
"""

import os
import sys
import tempfile
import time

from benchmarks.common import add_json_flag, machine, run_benchmark
from clade_tf.cli import ArgumentParser, positive_int

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def make_ade20k_like(root, count, width=512, height=384, regions=190, classes=150, seed=0):
    """`count` ADE20K-layout training pairs (`images/training/ADE_train_N.jpg`,
    `annotations/training/ADE_train_N.png`): Voronoi label maps of `regions` cells with
    classes 1..`classes` (0 is ADE20K's don't-care), images coloured per class plus noise."""
    import numpy as np
    from PIL import Image
    from scipy.spatial import cKDTree

    img_dir, ann_dir = os.path.join(root, "images", "training"), os.path.join(root, "annotations", "training")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    colours = np.random.default_rng(seed).integers(0, 256, (classes + 1, 3))
    yx = np.stack(np.mgrid[0:height, 0:width], -1).reshape(-1, 2)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        centres = rng.uniform((0, 0), (height, width), (regions, 2))
        cell = cKDTree(centres).query(yx)[1].reshape(height, width)
        label = rng.integers(1, classes + 1, regions)[cell].astype(np.uint8)
        image = np.clip(colours[label] + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        name = f"ADE_train_{i + 1:08d}"
        Image.fromarray(image).save(os.path.join(img_dir, name + ".jpg"), quality=90)
        Image.fromarray(label).save(os.path.join(ann_dir, name + ".png"))
    return root


def measure(data, icpe, batch_size, batches, warmup, seed=0):
    """Images/s of the training pipeline of `data` (a DataConfig) for the ADE20K generator."""
    from clade_tf.data import sources
    from clade_tf.presets import get_preset

    gen = get_preset(data.dataset).generator_config("clade-icpe" if icpe else "clade")
    source = sources.make_source(data, gen, seed)
    ds = sources.make_training_dataset(source, gen, batch_size, seed, num_steps=warmup + batches)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t
    del it
    ips = batches * batch_size / seconds
    cores = os.cpu_count() or 1
    return {"images_per_second": ips, "cores": cores, "images_per_second_per_core": ips / cores,
            "icpe": bool(icpe), "cache": bool(data.cache), "batches": batches, "batch_size": batch_size}


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    p.add_argument("--dataset", default="ade20k", choices=["ade20k"], help="dataset layout and preset")
    p.add_argument("--dataroot", help="dataset folder (default: an ADE20K-sized folder made in a temporary dir)")
    p.add_argument("--count", type=positive_int, default=300, help="pairs in the made folder")
    p.add_argument("--cache", help="a prepared cache of --dataroot (python -m train.prepare)")
    p.add_argument("--icpe", action="store_true", help="include the CLADE-ICPE positional maps")
    p.add_argument("--compare", action="store_true",
                   help="raw files without / with ICPE maps, then a prepared cache without / with them, in one run")
    p.add_argument("--batch-size", type=positive_int, default=16, help="batch size")
    p.add_argument("--batches", type=positive_int, default=30, help="timed batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    add_json_flag(p, "lines")
    args = p.parse_args(argv)
    if args.dataroot and not os.path.isdir(args.dataroot):
        p.error(f"--dataroot {args.dataroot}: not found")
    if args.cache and not os.path.isdir(args.cache):
        p.error(f"--cache {args.cache}: not found")
    return args


def bench(args):
    from clade_tf.data.cache import prepare
    from clade_tf.presets import get_preset

    preset = get_preset(args.dataset)
    with tempfile.TemporaryDirectory(prefix="clade-pipeline-") as tmp:
        root = args.dataroot
        made = None
        if not root:
            t = time.perf_counter()
            root = make_ade20k_like(os.path.join(tmp, "data"), args.count)
            made = time.perf_counter() - t
        data = preset.data_config(dataroot=root, cache=args.cache)
        paths = {}

        def run(name, d, icpe):
            paths[name] = measure(d, icpe, args.batch_size, args.batches, args.warmup)

        if args.compare:
            run("raw files", _replace(data, None), False)
            run("raw files + ICPE", _replace(data, None), True)
            cache = os.path.join(tmp, "cache")
            t = time.perf_counter()
            prepare(_replace(data, None), (preset.image_height, preset.image_width), cache, preset.use_instance,
                    True, workers=os.cpu_count() or 1)
            prep_s = time.perf_counter() - t
            run("prepared cache", _replace(data, cache), False)
            run("prepared cache + ICPE", _replace(data, cache), True)
            result = {"dataset": args.dataset, "machine": machine(), "made_folder_seconds": made,
                      "prepare_seconds": prep_s, "paths": paths}
        else:
            run("prepared cache" if args.cache else "raw files", data, args.icpe)
            result = {**next(iter(paths.values())), "dataset": args.dataset, "machine": machine()}
    return result


def format_table(result):
    """A line per measured path (`--compare`: four, named; else the one measured)."""
    paths = result.get("paths") or {"prepared cache" if result["cache"] else "raw files": result}
    batch = next(iter(paths.values()))["batch_size"]
    lines = [f"data pipeline, {result['dataset']}, batch {batch}, {result['machine']}"]
    for name, r in paths.items():
        lines.append(f"{name:<24} {r['images_per_second']:8.1f} images/s  "
                     f"({r['images_per_second_per_core']:.1f} per core, {r['cores']} cores)")
    return "\n".join(lines)


def main(argv=None):
    return run_benchmark(argv, parse_args, bench, format_table)


def _replace(data, cache):
    import dataclasses

    return dataclasses.replace(data, cache=cache)


if __name__ == "__main__":
    sys.exit(main())
