r"""Latency of the exported generator in the browser demo vs the native runtimes.

    python -m benchmarks.web --preset synthetic [--formats tflite-fp32,tflite-int8,onnx] [--threads 2] \
        [--rounds 3] [--repeats 10] [--warmup 3] [--json]

The preset's random-weight generator (BatchNorm calibrated; `benchmarks.common`) is exported
(fp32 TFLite, full-integer int8 TFLite, ONNX; verified) and each file is timed twice on this
machine: natively (`clade_tf.export.load_runner`: LiteRT's interpreter with XNNPACK,
onnxruntime; a fresh process) and in headless Chromium (`python -m export.web`'s site served on
localhost with cross-origin isolation, `benchmarks/web_bench.mjs`: LiteRT.js for the .tflite
files, onnxruntime-web for the .onnx, WebAssembly with `--threads` threads), each the median of
`--repeats` calls after `--warmup`, in `--rounds` rounds that alternate the two (a fresh process
and a fresh browser each time); the median over rounds is reported. Browser times are taken
inside the page around the runtime call (input tensors in, output array out); the page's load
time (runtime + model) and the browser's resident memory after the runs (all its processes) are
reported.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchmarks.common import add_json_flag, machine, run_benchmark, size_bytes
from benchmarks.guard import call_guarded, default_memory_limit_mb
from clade_tf.cli import ArgumentParser, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = {"tflite-fp32": "litert", "tflite-fp16": "litert", "tflite-int8-dynamic": "litert",
           "tflite-int8": "litert", "onnx": "ort"}


def browser_time(site, threads, warmup, repeats):
    from clade_tf.export.web import serve

    server = serve(site, 0, background=True)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/?threads={threads}"
        p = subprocess.run(["node", os.path.join(ROOT, "benchmarks", "web_bench.mjs"), url, str(warmup),
                            str(repeats)], cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
        if p.returncode:
            lines = [x for x in p.stderr.splitlines() if "Error" in x or "error" in x] or ["node failed"]
            return {"error": lines[0].strip()}
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        server.shutdown()
        server.server_close()


def bench(args):
    from clade_tf.export import FORMATS
    from clade_tf.export.web import build_site

    limit = default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-web-bench-")
    try:
        exp, npz = os.path.join(tmp, "export"), os.path.join(tmp, "inputs.npz")
        info, error, _ = call_guarded("benchmarks.common", "export_for_bench",
                                      (args.preset, args.norm, args.formats, exp, npz), limit)
        if info is None:
            raise SystemExit(f"error: export failed: {error}")
        rows = {fmt: {"format": fmt, "size_bytes": size_bytes(os.path.join(exp, FORMATS[fmt])), "native_round_ms": [],
                      "browser_round_ms": [], "load_round_ms": [], "browser_rss_mb": None, "backend": None,
                      "native_error": None, "browser_error": None} for fmt in args.formats}
        for fmt in args.formats:
            build_site(exp, os.path.join(tmp, f"site-{fmt}"), args.preset, RUNTIME[fmt], FORMATS[fmt])
        # rounds alternate native and browser runs of every file, so load from other processes on
        # the machine hits both sides alike; the reported value is the median over rounds
        for rnd in range(args.rounds):
            for fmt, row in rows.items():
                native, error, _ = call_guarded("benchmarks.common", "time_model",
                                                (os.path.join(exp, FORMATS[fmt]), npz, args.threads, args.repeats,
                                                 args.warmup), limit)
                if native:
                    row["native_round_ms"].append(native["median_ms"])
                row["native_error"] = row["native_error"] or error
                b = browser_time(os.path.join(tmp, f"site-{fmt}"), args.threads, args.warmup, args.repeats)
                if "error" in b:
                    row["browser_error"] = row["browser_error"] or b["error"]
                else:
                    row["browser_round_ms"].append(b["median_ms"])
                    row["load_round_ms"].append(b["load_ms"])
                    row["backend"] = b["backend"]
                    rss = b["memory_bytes"] / 2**20 if b.get("memory_bytes") else None
                    row["browser_rss_mb"] = max(row["browser_rss_mb"] or 0, rss or 0) or None
                print(f"[round {rnd + 1}/{args.rounds} {fmt}] native {native and native['median_ms']} ms, "
                      f"browser {b.get('median_ms')} ms", file=sys.stderr)
        for row in rows.values():
            for key in ("native", "browser", "load"):
                times = row[f"{key}_round_ms"]
                row[f"{key}_ms"] = statistics.median(times) if times else None
        rows = list(rows.values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"preset": args.preset, "norm": args.norm, "threads": args.threads, "repeats": args.repeats,
            "rounds": args.rounds,
            "machine": machine(), "params": info["params"], "results": rows}


def format_table(result):
    def ms(v):
        return "—" if v is None else f"{v:.1f}"

    lines = [(f"{result['preset']} generator ({result['norm']}, {result['params']:,} parameters), "
             f"{result['threads']} threads, median over {result.get('rounds', 1)} rounds of the median of "
             f"{result['repeats']} runs, {result['machine']}"),
             "", ("| file | size | native (LiteRT / onnxruntime) ms | browser ms | browser / native | "
                 "page load ms | browser RSS | browser runtime |"), "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["results"]:
        ratio = (f"{r['browser_ms'] / r['native_ms']:.2f}×" if r["browser_ms"] and r["native_ms"] else "—")
        lines.append(f"| {r['format']} | {r['size_bytes'] / 1e6:.2f} MB | {ms(r['native_ms'])} | "
                     f"{ms(r['browser_ms'])} | {ratio} | {ms(r['load_ms'])} | "
                     f"{'—' if r.get('browser_rss_mb') is None else format(r['browser_rss_mb'], '.0f') + ' MB'} | "
                     f"{r['backend'] or r['browser_error'] or r['native_error']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.web", description=__doc__)
    p.add_argument("--preset", default="synthetic", choices=sorted(PRESETS), help="generator measured")
    p.add_argument("--norm", default="clade", choices=("clade", "clade-icpe", "spade", "none"), help="norm mode")
    p.add_argument("--formats", default="tflite-fp32,tflite-int8,onnx",
                   help="comma-separated, some of: " + ", ".join(RUNTIME))
    p.add_argument("--threads", type=positive_int, default=2, help="threads of every runtime, native and WebAssembly")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed calls")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="native and browser timings alternate this many times per file; the median is reported")
    add_json_flag(p)
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in RUNTIME]
    if bad or not args.formats:
        p.error(f"--formats: {', '.join(bad) or 'none given'}; expected some of {', '.join(RUNTIME)}")
    if args.warmup < 0:
        p.error(f"--warmup {args.warmup}: expected >= 0")
    return args


def main(argv=None):
    return run_benchmark(argv, parse_args, bench, format_table)


if __name__ == "__main__":
    sys.exit(main())
