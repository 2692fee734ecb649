r"""Full-integer int8 against fp32 TFLite: picture quality and latency, optionally against
another version of this code.

    python -m benchmarks.int8 --run RUN [--against REV] [--threads 2] [--rounds 5] [--json]
    python -m benchmarks.int8 --preset ade20k [--norm clade] [--against REV] ...

Exports `tflite-fp32` and `tflite-int8` of one generator: a run directory (`--run`,
calibrated on the run's data as `python -m export` does) or the preset's random-weight
generator with calibrated BatchNorm statistics (`--preset`, calibrated on blocky random
label maps, the same generator `benchmarks.latency` times). With `--against REV` the
same generator is also exported by the code at git revision REV (a temporary
`git worktree` of this checkout, removed afterwards), so a change to the export is
measured against what it replaces in one run.

Quality: every version's int8 output against its own fp32 TFLite output (the export's
verification), as relative L2 and PSNR (peak-to-peak 2), all on the same inputs: for
`--run`, samples of the run's training stream after the calibration samples; for
`--preset`, blocky random label maps. Latency: each model timed in `--rounds` fresh
processes, rounds interleaved across versions in alternating order (`benchmarks.common.time_model`: the
median of `--repeats` calls after `--warmup`); the median over rounds is reported with
each version's ratio to the current code.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchmarks.common import add_json_flag, machine, run_benchmark
from benchmarks.guard import ROOT, call_guarded, default_memory_limit_mb, failure_line, run_guarded
from clade_tf.cli import ArgumentParser
from clade_tf.export import runtime

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FORMATS = ("tflite-fp32", "tflite-int8")


def export_code(args, out, npz):
    """The child's code: export with the library of the checkout it runs in. For a run, the
    library calls `python -m export --run` makes (the run's generator, int8 calibration on
    the run's data, `clade_tf.export.export`); for a preset,
    `benchmarks.common.export_for_bench`. Only names every version has: the child may
    import another revision's `clade_tf` (`--against`)."""
    if args.run:
        run = os.path.abspath(args.run)
        return (
            "import sys\n"
            "from clade_tf.export import calibration_inputs, export\n"
            "from clade_tf.rundir import RunDirectory\n"
            f"g, cfg = RunDirectory({run!r}).load_generator()\n"
            f"calibration, source, reason = calibration_inputs(g.config, {args.calibration_samples!r}, cfg.data, "
            "cfg.seed, 'run data', '')\n"
            "if reason:\n"
            "    print(f'notice: int8 calibration on blocky random label maps: {reason}', file=sys.stderr)\n"
            f"export(g, {out!r}, {list(FORMATS)!r}, batch=1, calibration=calibration, calibration_source=source, "
            f"inputs=({run!r},))\n"
        )
    return ("from benchmarks.common import export_for_bench; "
            f"export_for_bench({args.preset!r}, {args.norm!r}, {list(FORMATS)!r}, {out!r}, {npz!r})")


def check_inputs(args):
    """The inputs every version is measured on, and their description."""
    import numpy as np

    from clade_tf.export import example_inputs
    from clade_tf.export.exporter import check_inputs as run_inputs
    from clade_tf.presets import get_preset
    from clade_tf.rundir import RunDirectory

    if args.run:
        cfg = RunDirectory(args.run).read_config()
        x = run_inputs(cfg.generator, cfg.data, cfg.seed, args.calibration_samples, args.samples)
        return x, f"run data, after the first {args.calibration_samples} ({args.samples} samples)"
    cfg = get_preset(args.preset).generator_config(args.norm)
    x = example_inputs(cfg, 1, seed=1, n_batches=args.samples)
    return ({k: np.concatenate([d[k] for d in x]) for k in x[0]},
            f"random blocky labels ({args.samples} samples)")


def bench_int8(args):
    import numpy as np

    from clade_tf.export import compare, load_runner

    limit = args.memory_limit_mb or default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-int8-")
    versions = {"current": ROOT}
    worktree = None
    try:
        if args.against:
            worktree = os.path.join(tmp, "against")
            r = subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", worktree, args.against],
                               capture_output=True, text=True, check=False)
            if r.returncode:
                raise SystemExit(f"error: --against {args.against}: {r.stderr.strip().splitlines()[-1]}")
            versions[args.against] = worktree
        x, source = check_inputs(args)
        npz = os.path.join(tmp, "inputs.npz")
        np.savez(npz, **{k: v[:1] for k, v in x.items()})
        rows = []
        for name, tree in versions.items():
            out = os.path.join(tmp, f"export-{len(rows)}")
            rc, _, stderr, peak, killed = run_guarded(export_code(args, out, out + ".npz"), limit, cwd=tree)
            row = {"version": name, "export_peak_rss_mb": peak}
            if killed or not os.path.isfile(os.path.join(out, runtime.FORMATS["tflite-int8"])):
                row["error"] = "export: " + failure_line(rc, stderr, peak, killed, limit)
                rows.append(row)
                print(f"[{name}] {row['error']}", file=sys.stderr)
                continue
            paths = {k: os.path.join(out, runtime.FORMATS[k]) for k in FORMATS}
            ref = load_runner(paths["tflite-fp32"])(x)
            out8 = load_runner(paths["tflite-int8"])(x)
            err, psnr = compare(out8, ref)
            row.update(paths=paths, rel_l2=err, psnr_db=psnr, max_abs_255=float(np.abs(out8 - ref).max() * 127.5),
                       round_ms={k: [] for k in FORMATS})
            rows.append(row)
            print(f"[{name}] int8 vs fp32 TFLite: PSNR {psnr:.2f} dB, rel L2 {err:.2e}", file=sys.stderr)
        for rnd in range(args.rounds):
            for fmt in FORMATS:
                for row in rows if rnd % 2 == 0 else rows[::-1]:  # alternate: the first process of a pair runs slower
                    if "error" in row:
                        continue
                    r, error, _ = call_guarded("benchmarks.common", "time_model",
                                               (row["paths"][fmt], npz, args.threads, args.repeats, args.warmup),
                                               limit)
                    if error:
                        row["error"] = f"timing {fmt}: {error}"
                        continue
                    row["round_ms"][fmt].append(r["median_ms"])
                    print(f"[round {rnd + 1}/{args.rounds} {row['version']} {fmt}] {r['median_ms']:.1f} ms",
                          file=sys.stderr)
    finally:
        if worktree:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", worktree], capture_output=True,
                           check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    base = {}
    for row in rows:
        row.pop("paths", None)
        if "error" in row:
            continue
        row["median_ms"] = {k: statistics.median(v) for k, v in row["round_ms"].items() if v}
        for k, v in row["median_ms"].items():
            base.setdefault(k, v)
            row.setdefault("vs_current", {})[k] = v / base[k]
    return {"benchmark": "int8", "model": args.run or f"{args.preset} {args.norm} (random weights)",
            "inputs": source, "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
            "machine": machine(), "rows": rows}


def format_table(result):
    lines = [(f"int8 vs fp32 TFLite: {result['model']}; on {result['inputs']}; {result['threads']} threads, "
             f"{result['rounds']} rounds, {result['machine']}")]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"  {r['version']:<10} failed: {r['error']}")
            continue
        ms = r.get("median_ms", {})
        timing = "  ".join(f"{k} {ms[k]:8.1f} ms (x{r['vs_current'][k]:.3f})" for k in FORMATS if k in ms)
        lines.append(f"  {r['version']:<10} PSNR {r['psnr_db']:6.2f} dB  rel L2 {r['rel_l2']:.2e}  "
                     f"max |diff| {r['max_abs_255']:5.1f}/255  {timing}")
    return "\n".join(lines)


def parse_args(argv=None):
    from clade_tf.export.exporter import CALIBRATION_SAMPLES
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.int8", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (python -m train) to export")
    src.add_argument("--preset", choices=sorted(PRESETS), help="the preset's random-weight generator")
    p.add_argument("--norm", default="clade", choices=("clade", "clade-icpe", "spade", "none"),
                   help="with --preset: norm mode")
    p.add_argument("--against", metavar="REV", help="also export with the code at this git revision")
    p.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES, help="int8 calibration samples")
    p.add_argument("--samples", type=int, default=8, help="samples the quality is measured on")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--rounds", type=int, default=5, help="timing processes per model, interleaved")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per process first")
    p.add_argument("--memory-limit-mb", type=float, help="kill a child above this resident memory "
                   "(default: 75 %% of RAM)")
    add_json_flag(p)
    args = p.parse_args(argv)
    if args.run and not os.path.isfile(os.path.join(args.run, "config.json")):
        p.error(f"--run {args.run}: not a run directory (no config.json)")
    return args


def main(argv=None):
    return run_benchmark(argv, parse_args, bench_int8, format_table)


if __name__ == "__main__":
    sys.exit(main())
