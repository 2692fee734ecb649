"""`python -m export`: export a trained (or imported) generator to edge formats, verified.

    python -m export --run runs/synthetic-clade --out exports/synthetic-clade \\
        [--formats saved_model,tflite,tflite-fp16,tflite-int8-dynamic,tflite-int8,onnx] [--batch 1]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    from export.exporter import FORMATS

    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (python -m train or export.from_torch)")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    p.add_argument("--batch", type=int, default=1, help="static batch size of the exported graph")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    from export.exporter import ExportError, export, load_run

    try:
        _, g, _ = load_run(args.run)
        report = export(g, args.out, [f.strip() for f in args.formats.split(",") if f.strip()],
                        batch=args.batch, force=args.force)
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in report["formats"].items():
        print(f"{name:<26} rel_l2 {r['rel_l2']:.2e}  PSNR {r['psnr_db']:6.1f} dB  {'ok' if r['ok'] else 'FAILED'}")
    print(f"wrote {args.out} (report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
