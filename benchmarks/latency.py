r"""Latency of the exported generator per norm mode and format.

    python -m benchmarks.latency --preset ade20k --norm none,clade,clade-icpe,spade \
        --formats tflite-fp32,tflite-int8-dynamic,onnx --threads 2 --rounds 3 --repeats 5 \
        [--official DIR --torch-python PYTHON] [--pairs N] [--memory-limit-mb MB] [--json] [--plot FILE]

With `--official`, every mode but `none` starts from the official PyTorch generator
(a local copy of github.com/tzt101/CLADE; `benchmarks.official_export`, run by
`--torch-python`): its own random initialization and calibrated BatchNorm statistics,
exported with `torch.onnx` and timed in onnxruntime (`official-onnx` rows), and ours is
that state dict imported with `clade_tf.torchio.convert`, so both compute the same function;
`x official` is each of our formats' time over the official model's.

For each norm mode, build the generator (random weights, BatchNorm statistics
calibrated on one batch), export it with `clade_tf.export.export` (verified), and
time each format in fresh processes: `--rounds` processes per model, interleaved
across modes so that load from other processes hits every mode alike, each timing
`--repeats` calls of the model's runner (`clade_tf.export.load_runner`, batch 1)
after `--warmup`; the reported latency is the median over rounds of the per-process
medians, with each mode's ratio to `none`. Every export and timing child runs under
a memory guard (`--memory-limit-mb`, default 75 % of RAM): one that grows past it is
killed and its row reports so. The peak resident memory of each timing process is
reported per format.

`--pairs N` then times each model of a mode but `none` in one process with `none`'s
model of the same format, and with the official model, N pairs in alternating order:
the median per-pair ratio (with quartiles) cancels the machine's drift, which moves
the fresh-process rounds by 10-20 % on a shared box.
"""

import os
import shutil
import statistics
import sys
import tempfile

from benchmarks.common import add_json_flag, machine, run_benchmark, size_bytes, split
from benchmarks.guard import ROOT, call_guarded, default_memory_limit_mb
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bench_latency(args):
    from clade_tf.export import FORMATS, parse_formats

    norms = split(args.norm)
    try:
        formats = parse_formats(args.formats)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    limit = args.memory_limit_mb or default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-bench-")
    rows = {}
    try:
        # 1. export every mode (each in a guarded child: conversion and verification memory
        #    is released between modes, and an out-of-memory mode fails alone)
        for norm in norms:
            out, npz = os.path.join(tmp, norm), os.path.join(tmp, f"{norm}.npz")
            weights = None
            if args.official and norm != "none":  # the official model first: ours gets its weights
                off = os.path.join(tmp, f"{norm}-official")
                weights, off_row = official_row(args, norm, npz, off)
                rows[(norm, OFFICIAL)] = off_row
            info, error, peak = call_guarded("benchmarks.common", "export_for_bench",
                                             (args.preset, norm, formats, out, npz, weights), limit)
            if info and (norm, OFFICIAL) in rows:  # the same network, weights and all
                rows[(norm, OFFICIAL)].update(params=info["params"], macs=info["macs"])
            print(f"[{norm}] exported (peak {peak:.0f} MB)" if info else
                  f"[{norm}] export failed: {error}", file=sys.stderr)
            for fmt in formats:
                row = {"norm": norm, "format": fmt, "params": None, "macs": None, "size_bytes": None,
                       "median_ms": None, "peak_rss_mb": None, "export_peak_rss_mb": peak,
                       "round_ms": []}
                if info is None:
                    row["error"] = "export: " + error
                else:
                    path = os.path.join(out, FORMATS[fmt])
                    row.update(params=info["params"], macs=info["macs"], size_bytes=size_bytes(path),
                               path=path, npz=npz)
                rows[(norm, fmt)] = row
        # 2. time: rounds interleave the modes, so load from other processes hits them alike
        for rnd in range(args.rounds):
            for fmt in formats + ([OFFICIAL] if args.official else []):
                for norm in norms:
                    row = rows.get((norm, fmt))
                    if row is None:  # no official `none`
                        continue
                    if "error" in row:
                        continue
                    r, error, peak = call_guarded(
                        "benchmarks.common", "time_model",
                        (row["path"], row["npz"], args.threads, args.repeats, args.warmup), limit)
                    if error:
                        row["error"] = error
                        row["peak_rss_mb"] = peak
                        continue
                    row["round_ms"].append(r["median_ms"])
                    row["peak_rss_mb"] = max(row["peak_rss_mb"] or 0.0, r["peak_rss_mb"])
                    print(f"[round {rnd + 1}/{args.rounds} {norm} {fmt}] {r['median_ms']:.1f} ms, "
                          f"peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
        # 3. pairs in one process (drift cancels): each mode against `none` in the same
        #    format, and against its official model
        if args.pairs:
            pair_rows(rows, args, limit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = []
    for row in rows.values():
        row.pop("path", None)
        row.pop("npz", None)
        if row["round_ms"] and "error" not in row:
            row["median_ms"] = statistics.median(row["round_ms"])
        results.append(row)
    base = {r["format"]: r["median_ms"] for r in results if r["norm"] == "none" and r["median_ms"]}
    official = {r["norm"]: r["median_ms"] for r in results if r["format"] == OFFICIAL and r["median_ms"]}
    for r in results:
        r["ratio_to_none"] = (r["median_ms"] / base[r["format"]]
                              if r["median_ms"] and r["format"] in base else None)
        if r["norm"] in official and r["median_ms"]:  # < 1: faster than the official model
            r["ratio_to_official"] = r["median_ms"] / official[r["norm"]]
    return {"preset": args.preset, "threads": args.threads, "repeats": args.repeats,
            "rounds": args.rounds, "memory_limit_mb": round(limit), "machine": machine(),
            "results": results}


OFFICIAL = "official-onnx"  # the official PyTorch generator, exported with torch.onnx, in onnxruntime


def pair_rows(rows, args, limit):
    """Adds `paired_to_none` and `paired_to_official` to each row of a mode but `none`:
    `benchmarks.common.time_pair`, the two models in one process in alternating order."""
    for (norm, fmt), row in rows.items():
        if norm == "none" or fmt == OFFICIAL or "error" in row:
            continue
        for key, other in (("paired_to_none", rows.get(("none", fmt))),
                           ("paired_to_official", rows.get((norm, OFFICIAL)))):
            if other is None or "error" in other:
                continue
            pair, error, _ = call_guarded("benchmarks.common", "time_pair",
                                          ([other["path"], row["path"]], [other["npz"], row["npz"]],
                                           args.threads, args.pairs, args.warmup), limit)
            row[key] = pair or {"error": error}
            print(f"[pairs {norm} {fmt}] {key}: " + (f"x{pair['ratio']:.3f}" if pair else error),
                  file=sys.stderr)


def official_row(args, norm, npz, out):
    """Exports the official generator (`benchmarks.official_export`, under `--torch-python`)
    for the timing inputs written to `npz`; returns `(its state dict file or None, its row)`."""
    import subprocess

    import numpy as np

    from benchmarks.train_step import official_options
    from clade_tf.export import example_inputs
    from clade_tf.presets import get_preset

    preset = get_preset(args.preset)
    row = {"norm": norm, "format": OFFICIAL, "params": None, "macs": None, "size_bytes": None,
           "median_ms": None, "peak_rss_mb": None, "export_peak_rss_mb": None, "round_ms": []}
    cfg = preset.run_config(norm)
    try:
        if cfg.generator.use_instance:
            raise ValueError("instance maps are not supported with --official")
        options = official_options(cfg, 1)
    except ValueError as e:
        row["error"] = f"official: {e}"
        return None, row
    np.savez(npz, **example_inputs(cfg.generator, 1, seed=3)[0])  # export_for_bench writes the same
    r = subprocess.run([args.torch_python, "-m", "benchmarks.official_export", "--official", args.official,
                        "--labels", npz, "--out", out, "--", *options],
                       cwd=ROOT, capture_output=True, text=True, check=False)
    if r.returncode:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        row["error"] = "official export: " + (lines[-1] if lines else f"exit {r.returncode}")[:200]
        print(f"[{norm}] {row['error']}", file=sys.stderr)
        return None, row
    path = os.path.join(out, "official.onnx")
    row.update(size_bytes=size_bytes(path), path=path, npz=os.path.join(out, "official_inputs.npz"))
    print(f"[{norm}] official model exported", file=sys.stderr)
    return os.path.join(out, "net_G.pth"), row


def format_table(result):
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"latency, preset {result['preset']}, {result['threads']} threads, {result['machine']}",
             (f"{'norm':<11} {'format':<20} {'params':>12} {'MACs':>16} {'size MB':>8} {'ms':>9} "
              f"{'x none':>7} {'x offic':>7} {'peak MB':>8} {'export GB':>9}")]
    for r in result["results"]:
        ms = fmt(r["median_ms"], ".1f") if r["median_ms"] else "failed"
        size = r["size_bytes"] / 1e6 if r["size_bytes"] is not None else None
        lines.append(f"{r['norm']:<11} {r['format']:<20} {fmt(r['params'], ','):>12} {fmt(r['macs'], ','):>16} "
                     f"{fmt(size, '.1f'):>8} {ms:>9} {fmt(r.get('ratio_to_none'), '.2f'):>7} "
                     f"{fmt(r.get('ratio_to_official'), '.2f'):>7} {fmt(r.get('peak_rss_mb'), '.0f'):>8} "
                     f"{fmt(r['export_peak_rss_mb'] and r['export_peak_rss_mb'] / 1024, '.1f'):>9}")
    lines += [f"{r['norm']} {r['format']}: {r['error']}" for r in result["results"] if r.get("error")]
    for r in result["results"]:
        pairs = [(what, r[key]) for what, key in (("none", "paired_to_none"), ("official", "paired_to_official"))
                 if key in r]
        if pairs:
            lines.append(f"{r['norm']} {r['format']}, paired in one process: " + "; ".join(
                f"x {what} {p['error']}" if "error" in p else
                f"x {what} {p['ratio']:.3f} ({p['quartiles'][0]:.3f}-{p['quartiles'][1]:.3f})"
                for what, p in pairs))
    return "\n".join(lines)


def plot_latency(result, path):
    import numpy as np
    from PIL import Image, ImageDraw

    from clade_tf.viz import save_png

    rows = [r for r in result["results"] if r["median_ms"]]
    if not rows:
        raise SystemExit("error: --plot: no format was timed")
    fmts = sorted({r["format"] for r in rows})
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    w, bar, gap = 900, 26, 14
    h = 60 + len(fmts) * (len(norms) * bar + gap + 24)
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    dr.text((10, 10), f"generator latency, preset {result['preset']}, {result['threads']} threads "
                      f"(median ms; ratio to none)", fill="black")
    top = max(r["median_ms"] for r in rows)
    colours = {"none": (150, 150, 150), "clade": (40, 120, 200), "clade-icpe": (60, 170, 120),
               "spade": (210, 90, 60)}
    y = 40
    for f in fmts:
        dr.text((10, y), f, fill="black")
        y += 18
        for n in norms:
            r = next((r for r in rows if r["format"] == f and r["norm"] == n), None)
            if r is None:
                continue
            length = int((w - 330) * r["median_ms"] / top)
            dr.rectangle([110, y, 110 + length, y + bar - 6], fill=colours.get(n, (100, 100, 100)))
            ratio = f" x{r['ratio_to_none']:.2f}" if r.get("ratio_to_none") else ""
            dr.text((10, y + 4), n, fill="black")
            dr.text((116 + length, y + 4), f"{r['median_ms']:.1f} ms{ratio}", fill="black")
            y += bar
        y += gap
    save_png(path, np.asarray(img))


def parse_args(argv=None):
    from clade_tf.export import FORMATS
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    p.add_argument("--preset", default="ade20k", choices=sorted(PRESETS),
                   help="dataset preset whose generator is measured")
    p.add_argument("--norm", default="none,clade,clade-icpe,spade", help="comma-separated norm modes")
    p.add_argument("--formats", default="tflite-fp32,tflite-int8-dynamic,onnx",
                   help="comma-separated, some of: " + ", ".join(FORMATS))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per process before the timed ones")
    p.add_argument("--rounds", type=int, default=3,
                   help="fresh-process timings per model, interleaved across modes; the median is reported")
    p.add_argument("--pairs", type=int, default=0,
                   help="after the rounds, time each model in one process with `none` of its format "
                        "(and with the official model), this many alternating pairs (0: no pairing)")
    p.add_argument("--memory-limit-mb", type=float,
                   help="kill a child (export or timing) above this resident memory (None: 75%% of RAM)")
    p.add_argument("--official", metavar="DIR",
                   help="also time the official generator (a local copy of github.com/tzt101/CLADE), "
                        "exported with torch.onnx, in onnxruntime, on the same weights (ours imported from it)")
    p.add_argument("--torch-python", metavar="PYTHON",
                   help="with --official: a Python that has torch, torchvision and onnx")
    add_json_flag(p)
    p.add_argument("--plot", metavar="FILE", help="bar chart PNG of latency per mode and format")
    args = p.parse_args(argv)
    if args.official:
        if not args.torch_python:
            p.error("--official needs --torch-python (a Python that has torch, torchvision and onnx)")
        if not os.path.isfile(os.path.join(args.official, "models", "networks", "generator.py")):
            p.error(f"--official {args.official}: expected a copy of github.com/tzt101/CLADE "
                    "(models/networks/generator.py not found)")
    return args


def bench_and_plot(args):
    result = bench_latency(args)
    if args.plot:
        plot_latency(result, args.plot)
    return result


def main(argv=None):
    return run_benchmark(argv, parse_args, bench_and_plot, format_table)


if __name__ == "__main__":
    sys.exit(main())
