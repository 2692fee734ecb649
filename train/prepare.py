r"""`python -m train.prepare`: decode, resize and (with --icpe) compute the positional maps of a
dataset's training split once, into a cache that `python -m train --cache DIR` reads in
TensorFlow ops (see `clade_tf.data.cache`).

    python -m train.prepare --dataset ade20k --dataroot DIR --out CACHE [--icpe] [--workers N]

The cache holds the samples at the load size (286x286 for ADE20K / COCO-Stuff, the crop
size for `fixed` datasets): about 0.3 MB per sample without ICPE maps, 0.95 MB with
them (+0.33 MB with instance maps). Training still draws the random crop and flip per
epoch, exactly as from the files.
"""

import os
import sys
import time

from clade_tf.cli import (
    ArgumentParser,
    datasets,
    exit_code,
    import_tensorflow,
    positive_int,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_parser():
    p = ArgumentParser(prog="python -m train.prepare", description=__doc__)
    a = p.add_argument
    a("--dataset", required=True, choices=datasets(folders_only=True), help="dataset preset and folder layout")
    a("--dataroot", required=True, help="dataset folder (official layout of --dataset)")
    a("--out", required=True, help="cache folder to create (must not exist)")
    a("--icpe", action="store_true", help="include the positional maps CLADE-ICPE needs")
    a("--label-nc", type=int, help="custom datasets: number of classes")
    a("--contain-dontcare", action="store_true", help="custom datasets: the last class is don't-care")
    a("--use-instance", action="store_true", help="custom datasets: read instance maps")
    a("--palette", help="custom datasets with RGB colour masks: colour -> class file")
    a("--skip-bad-samples", action="store_true", help="leave bad samples out (reported) instead of stopping")
    a("--workers", type=positive_int, default=os.cpu_count() or 1, help="processes decoding in parallel")
    return p


def main(argv=None):
    import_tensorflow()
    from clade_tf.config import ConfigError
    from clade_tf.data.cache import CacheError, prepare
    from clade_tf.data.folders import BadSample
    from clade_tf.outdir import OutputError, check_writable
    from clade_tf.presets import resolve_preset

    args = build_parser().parse_args(argv)
    try:
        if not os.path.isdir(args.dataroot):
            raise CacheError(f"--dataroot {args.dataroot} does not exist")
        check_writable(args.out)
        custom = args.dataset == "custom"
        preset = resolve_preset(args.dataset, args.label_nc if custom else None, args.contain_dontcare and custom,
                                args.use_instance and custom)
        data = preset.data_config(dataroot=args.dataroot, palette=args.palette,
                                  skip_bad_samples=args.skip_bad_samples)
        t0 = time.perf_counter()

        def progress(done, total):
            if done == total or done % 100 == 0:
                print(f"\r{done}/{total} samples", end="\n" if done == total else "", flush=True)

        m = prepare(data, (preset.image_height, preset.image_width), args.out, preset.use_instance, args.icpe,
                    workers=args.workers, progress=progress)
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        return exit_code(e, failures=(CacheError, ConfigError, BadSample, OutputError), where=args.out)
    mb = len(m["files"]) * m["sample_bytes"] / 2**20
    print(f"wrote {args.out}: {len(m['files'])} samples at {m['size'][0]}x{m['size'][1]} ({', '.join(m['keys'])}), "
          f"{mb:.0f} MB, in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
