r"""Per-op profiles of the exported generator per norm mode: where the time goes.

    python -m benchmarks.ops --preset ade20k --norm none,clade --threads 2 [--json]

Each norm mode's random-weight generator (BatchNorm calibrated, as
`benchmarks.latency`) is exported to tflite-fp32 and onnx, then:

- onnx: onnxruntime's own profiler, kernel ms per op type per run (timed runs only);
- tflite-fp32: LiteRT's op profiler is the C++ `benchmark_model` tool, which the
  ai-edge-litert wheel does not ship, so the LiteRT process is sampled with `perf`
  (attached after warm-up, so loading and XNNPACK weight packing are excluded) and
  XNNPACK's kernel symbols, which are named by op, are summed per TFLite op. Without
  `perf` on the machine that part is reported as missing.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import add_json_flag, load_runner, median_ms, run_benchmark, split
from benchmarks.guard import (
    ROOT,
    call_guarded,
    default_memory_limit_mb,
)
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# perf symbols of the LiteRT/XNNPACK kernels -> the TFLite op they implement
TFLITE_KERNELS = (
    ("igemm", "CONV_2D"), ("gemm", "CONV_2D"), ("conv", "CONV_2D"), ("vmul", "MUL"), ("vadd", "ADD"),
    ("vlrelu", "LEAKY_RELU"), ("tanh", "TANH"), ("gather", "GATHER"), ("memmove", "GATHER/copy (memcpy)"),
    ("memcpy", "GATHER/copy (memcpy)"), ("resize", "RESIZE_NEAREST"), ("one_hot", "ONE_HOT"),
    ("pack", "weight packing"), ("quantize", "QUANTIZE"), ("dequantize", "DEQUANTIZE"),
)


def ort_op_profile(path, inputs_npz, threads, repeats, warmup):
    """Child-process job: onnxruntime's profiler, kernel ms per op type per run (timed runs only)."""
    import numpy as np


    data = dict(np.load(inputs_npz))
    runner = load_runner(path, threads=threads, profile_prefix=os.path.join(os.path.dirname(path), "ort_profile"))
    for _ in range(warmup):
        runner(data)
    median = median_ms(lambda: runner(data), repeats)
    with open(runner.session.end_profiling()) as f:
        events = json.load(f)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[warmup:]
    per_op, count = collections.defaultdict(float), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(
                a <= e["ts"] <= b for a, b in runs):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / len(runs)
            count[e["args"]["op_name"]] += 1
    return {"median_ms": median,
            "ops": {k: {"ms": v, "nodes": count[k] // len(runs)} for k, v in per_op.items()}}


def tflite_invoke_loop(path, inputs_npz, threads, repeats, warmup):
    """Child-process job: warm up, print READY, wait for a line on stdin, then time the calls.

    Times the bare `invoke` (inputs set once by the warm-up calls), so the perf samples
    of the timed window are the interpreter's ops and nothing else."""
    import numpy as np


    data = dict(np.load(inputs_npz))
    runner = load_runner(path, threads=threads)
    for _ in range(max(warmup, 1)):  # at least one call: it sets the inputs
        runner(data)
    print("READY", flush=True)
    sys.stdin.readline()
    return {"median_ms": median_ms(runner.interpreter.invoke, repeats)}


def tflite_op_profile(path, inputs_npz, threads, repeats, warmup):
    """Samples the LiteRT process with `perf` and maps kernel symbols to TFLite ops
    (`cpu_share_pct`); `{"error": ...}` when perf is missing or the child fails."""
    if shutil.which("perf") is None:
        return {"error": "perf is not installed; no TFLite per-op profile"}
    code = ("import json; from benchmarks.ops import tflite_invoke_loop; "
            f"print(json.dumps(tflite_invoke_loop({path!r}, {inputs_npz!r}, {threads}, {repeats}, {warmup})))")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        perf = None
        try:
            if child.stdout.readline().strip() != "READY":
                return {"error": "the TFLite child failed before profiling"}
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-p", str(child.pid), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # let perf attach
            child.stdin.write("go\n")
            child.stdin.flush()
            out = child.stdout.read()
            child.wait()
            perf.wait(timeout=60)
        finally:  # interrupted or failed: neither process outlives the benchmark
            for proc in (child, perf):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if child.returncode != 0 or not out.strip():
            return {"error": f"the TFLite child failed while profiled (exit code {child.returncode})"}
        if perf.returncode != 0 or not os.path.exists(data):
            return {"error": f"perf record failed (exit code {perf.returncode}; perf_event_paranoid?)"}
        rep = subprocess.run(["perf", "report", "-i", data, "--sort", "symbol", "--stdio"],
                             capture_output=True, text=True, check=False).stdout
    shares = collections.defaultdict(float)
    for line in rep.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1] in ("[.]", "[k]"):
            sym = parts[2].lower()
            op = "kernel (page faults, scheduling)" if parts[1] == "[k]" else next(
                (op for key, op in TFLITE_KERNELS if key in sym), "other")
            shares[op] += float(parts[0][:-1])
    return {"median_ms": json.loads(out.strip().splitlines()[-1])["median_ms"],
            "cpu_share_pct": dict(shares)}


def bench_ops(args):
    from clade_tf.export import FORMATS

    norms = split(args.norm)
    limit = args.memory_limit_mb or default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-ops-")
    result = {"preset": args.preset, "threads": args.threads, "repeats": args.repeats, "modes": {}}
    try:
        for norm in norms:
            out, npz = os.path.join(tmp, norm), os.path.join(tmp, f"{norm}.npz")
            _, error, _ = call_guarded("benchmarks.common", "export_for_bench",
                                       (args.preset, norm, ["tflite-fp32", "onnx"], out, npz), limit)
            if error:
                result["modes"][norm] = {"error": error}
                print(f"[{norm}] export failed: {error}", file=sys.stderr)
                continue
            onnx, error, _ = call_guarded("benchmarks.ops", "ort_op_profile",
                                          (os.path.join(out, FORMATS["onnx"]), npz, args.threads, args.repeats,
                                           args.warmup), limit)
            tfl = tflite_op_profile(os.path.join(out, FORMATS["tflite-fp32"]), npz, args.threads, args.repeats,
                                    args.warmup)
            result["modes"][norm] = {"onnx": onnx or {"error": error}, "tflite-fp32": tfl}
            print(f"[{norm}] profiled", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def op_value(v):
    """An op's number in a profile: onnxruntime's `{"ms": ...}` or TFLite's % share; 0 if absent."""
    if v is None:
        return 0.0
    return v["ms"] if isinstance(v, dict) else v


def format_table(result):
    modes = result["modes"]
    lines = [f"per-op profile, preset {result['preset']}, {result['threads']} threads"]
    lines += [f"  {m}: export failed: {r['error']}" for m, r in modes.items() if "error" in r]
    for fmt, key in (("onnx", "ops"), ("tflite-fp32", "cpu_share_pct")):
        lines.append(f"\n{fmt}: kernel ms per run (onnxruntime profiler)" if fmt == "onnx" else
                     f"\n{fmt}: share of the process's CPU time during the timed invokes, % (perf)")
        ok = {m: r[fmt] for m, r in modes.items() if fmt in r and "error" not in r[fmt]}
        lines += [f"  {m}: {r[fmt]['error']}" for m, r in modes.items() if fmt in r and "error" in r[fmt]]
        if not ok:
            continue
        lines.append(f"  {'op':<34}" + "".join(f"{m:>14}" for m in ok))
        lines.append(f"  {'median ms / run':<34}" + "".join(f"{r['median_ms']:>14.1f}" for r in ok.values()))
        ops = sorted({o for r in ok.values() for o in r[key]},
                     key=lambda o: -max(op_value(r[key].get(o)) for r in ok.values()))
        for o in ops:
            vals = [op_value(r[key].get(o)) for r in ok.values()]
            if max(vals) >= 0.05:
                lines.append(f"  {o:<34}" + "".join(f"{v:>14.2f}" for v in vals))
    return "\n".join(lines)


def parse_args(argv=None):
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.ops", description=__doc__)
    p.add_argument("--preset", default="ade20k", choices=sorted(PRESETS),
                   help="dataset preset whose generator is profiled")
    p.add_argument("--norm", default="none,clade", help="comma-separated norm modes")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    p.add_argument("--repeats", type=int, default=5, help="profiled (timed) calls per model")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled calls before the timed ones")
    p.add_argument("--memory-limit-mb", type=float,
                   help="kill an export or onnxruntime child above this resident memory (None: 75%% of RAM)")
    add_json_flag(p, "tables")
    return p.parse_args(argv)


def main(argv=None):
    return run_benchmark(argv, parse_args, bench_ops, format_table)


if __name__ == "__main__":
    sys.exit(main())
