r"""Benchmarks (numbers for the README, not tests).

    python -m export.bench [latency] --preset ade20k --norm none,clade,clade-icpe,spade \
        --formats tflite-fp32,tflite-int8-dynamic,onnx --threads 2 --rounds 3 --repeats 5 \
        [--memory-limit-mb MB] [--json] [--plot FILE]
    python -m export.bench ops --preset ade20k --norm none,clade --threads 2 [--json]
    python -m export.bench train --preset synthetic --modes clade,spade [--steps 20] [--json]

`latency` (the default): for each norm mode, build the generator (random weights,
BatchNorm statistics calibrated on one batch), export it with `python -m export`'s
verified exporter, and time each format in fresh processes: `--rounds` processes per
model, interleaved across modes so that load from other processes hits every mode
alike, each timing `--repeats` calls after `--warmup`; the reported latency is the
median over rounds of the per-process medians, with each mode's ratio to `none`.
Every export and timing child runs under a memory guard (`--memory-limit-mb`,
default 75 % of RAM): one that grows past it is killed and its row reports so.
The peak resident memory of each timing process is reported per format.

`ops`: per-op profiles of the exported tflite-fp32 (LiteRT sampled with `perf`, kernel
symbols mapped to ops) and onnx (onnxruntime's profiler) models of each norm mode.

`train`: optimizer steps per second of the full GAN step (one generator and one
discriminator update, no VGG) on this machine, for each norm mode in one process,
with each mode's speed relative to the first. Inputs are a fixed random batch at
the preset's size and class count (data loading excluded). Interleaves modes in
rounds so that load from other processes hits every mode alike.
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def random_batch(preset, batch_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = preset.image_height, preset.image_width
    # blocky label / instance maps with every class id possible
    lab = rng.integers(0, preset.num_classes, (batch_size, h // 8, w // 8))
    lab = np.repeat(np.repeat(lab, 8, 1), 8, 2).astype(np.int32)
    inst = np.repeat(np.repeat(rng.integers(0, 5, (batch_size, h // 16, w // 16)), 16, 1), 16, 2)
    batch = {"label": lab, "image": rng.uniform(-1, 1, (batch_size, h, w, 3)).astype(np.float32)}
    if preset.use_instance:
        batch["instance"] = inst.astype(np.int32)
    return batch


def build(preset, mode, batch_size):
    import keras
    import tensorflow as tf

    from clade_tf import Generator, MultiscaleDiscriminator
    from clade_tf.data.icpe import icpe_distance_map
    from train.gan import CladeGAN

    keras.utils.set_random_seed(0)
    gen_cfg = preset.generator_config(mode)
    gan = CladeGAN(Generator(gen_cfg), MultiscaleDiscriminator(preset.discriminator_config()))
    gan.compile(g_optimizer=keras.optimizers.Adam(1e-4, 0.0, 0.9),
                d_optimizer=keras.optimizers.Adam(4e-4, 0.0, 0.9))
    gan.build_all()
    batch = random_batch(preset, batch_size)
    if mode == "clade-icpe":
        import numpy as np

        batch["dist"] = np.stack([icpe_distance_map(l) for l in batch["label"]])
    batch = {k: tf.constant(v) for k, v in batch.items()}
    step = tf.function(gan.train_step)
    return step, batch


def bench_train(args):
    from clade_tf.presets import get_preset

    preset = get_preset(args.preset)
    batch_size = args.batch_size or preset.batch_size
    modes = args.modes.split(",")
    steps = {}
    for m in modes:
        t = time.time()
        fn, batch = build(preset, m, batch_size)
        for _ in range(args.warmup):
            fn(batch)
        steps[m] = (fn, batch)
        print(f"[{m}] built and warmed up in {time.time() - t:.1f}s", file=sys.stderr)
    times = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes:
            fn, batch = steps[m]
            t = time.perf_counter()
            for _ in range(args.steps):
                logs = fn(batch)
            float(logs["G_total"])  # wait for the result
            times[m].append((time.perf_counter() - t) / args.steps)
    result = {
        "benchmark": "train_step", "preset": args.preset, "batch_size": batch_size,
        "image_size": [preset.image_height, preset.image_width], "steps_per_round": args.steps,
        "rounds": args.rounds, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "modes": {},
    }
    base = None
    for m in modes:
        best = min(times[m])  # least disturbed round
        med = sorted(times[m])[len(times[m]) // 2]
        base = base or med
        result["modes"][m] = {"seconds_per_step_median": med, "seconds_per_step_best": best,
                              "steps_per_second": 1.0 / med, "time_vs_first_mode": med / base}
    return result


BENCH_FORMATS = {"tflite-fp32": "tflite", "tflite-fp16": "tflite-fp16", "tflite-int8": "tflite-int8",
                 "tflite-int8-dynamic": "tflite-int8-dynamic", "onnx": "onnx", "saved_model": "saved_model"}


def _tflite_invoke(path, data, threads):
    """A LiteRT (XNNPACK) interpreter with `data` set as its inputs: its `invoke`."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], data[d["name"]].astype(d["dtype"]))
    return it.invoke


def _ort_run(path, data, threads, profile_prefix=None):
    """An onnxruntime CPU session on `threads` intra-op threads: (session, a call on `data`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {x.name: data[x.name] for x in sess.get_inputs()}
    return sess, lambda: sess.run(["image"], feed)


def _median_ms(call, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[repeats // 2]


def time_model(path, fmt, inputs_npz, threads, repeats, warmup):
    """Runs in a child process: median ms per call and peak RSS."""
    import numpy as np

    data = dict(np.load(inputs_npz))
    if fmt.startswith("tflite"):
        call = _tflite_invoke(path, data, threads)
    elif fmt == "onnx":
        _, call = _ort_run(path, data, threads)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        f = tf.saved_model.load(path).signatures["serving_default"]
        feed = {k: tf.constant(v) for k, v in data.items()}

        def call():
            f(**feed)["image"].numpy()
    for _ in range(warmup):
        call()
    median = _median_ms(call, repeats)
    # VmHWM: this process's peak RSS (ru_maxrss would include the parent's size,
    # which survives fork + exec)
    with open("/proc/self/status") as f:
        peak_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    return {"median_ms": median, "peak_rss_mb": peak_mb}


def calibrate_batch_norm(generator, inputs):
    """Sets every BatchNorm's moving statistics to those of one batch (momentum 0 for one
    training-mode pass). Random-weight generators otherwise run inference with the
    initial statistics (0, 1), i.e. unnormalized, and their activations explode."""
    import tensorflow as tf

    bns = [l for l in generator._flatten_layers() if l.__class__.__name__ == "BatchNormalization"]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    generator({k: tf.constant(v) for k, v in inputs.items()}, training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m


def memory_total_mb():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemTotal")) / 1024


def default_memory_limit_mb():
    """The guard's default limit for a child process: 75 % of this machine's RAM."""
    return 0.75 * memory_total_mb()


def run_guarded(code, limit_mb):
    """Runs `python -c code` in a child, sampling its resident memory every 100 ms and
    killing it above `limit_mb` (so a model that needs more than the machine has fails
    its own row instead of taking the machine down). Returns (returncode, stdout,
    stderr, peak_mb, killed)."""
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, cwd=root, text=True)
        peak, killed = 0.0, False
        try:
            while p.poll() is None:
                try:
                    with open(f"/proc/{p.pid}/status") as f:
                        rss = next((int(l.split()[1]) for l in f if l.startswith("VmRSS")), 0) / 1024
                except OSError:
                    rss = 0.0
                peak = max(peak, rss)
                if rss > limit_mb:
                    killed = True
                    break
                time.sleep(0.1)
        finally:  # over the limit, or the parent interrupted: the child goes too
            if p.poll() is None:
                p.kill()
                p.wait()
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read(), err.read(), peak, killed


def export_for_bench(preset_name, norm, formats, out_dir, inputs_npz):
    """Child-process job: random-weight generator (BatchNorm calibrated), exported and
    verified by `python -m export`'s exporter; writes the timing inputs; returns params and MACs."""
    import keras
    import numpy as np

    from clade_tf import Generator
    from clade_tf.presets import get_preset
    from clade_tf.profiling import generator_profile
    from export.exporter import example_inputs, export

    keras.utils.set_random_seed(0)
    cfg = get_preset(preset_name).generator_config(norm)
    prof = generator_profile(cfg)
    g = Generator(cfg)
    g.build()
    calibrate_batch_norm(g, example_inputs(cfg, 2, seed=4)[0])
    export(g, out_dir, [BENCH_FORMATS[f] for f in formats], batch=1)
    np.savez(inputs_npz, **example_inputs(cfg, 1, seed=3)[0])
    return {"params": prof["params"], "macs": prof["macs"]}


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def _failure(rc, stderr, peak, killed, limit_mb):
    if killed:
        return f"killed: resident memory above {limit_mb:.0f} MB; peak seen {peak:.0f} MB"
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    return (lines[-1] if lines else f"exit code {rc}")[:200]


def call_guarded(module, func, args, limit_mb):
    """`module.func(*args)` in a guarded child (`run_guarded`); its JSON-able result is
    returned as `(result, None, peak_mb)`, a failure as `(None, one-line reason, peak_mb)`."""
    code = f"import json; from {module} import {func}; print(json.dumps({func}(*{tuple(args)!r})))"
    rc, out, err, peak, killed = run_guarded(code, limit_mb)
    if rc != 0 or killed:
        return None, _failure(rc, err, peak, killed, limit_mb), peak
    return _last_json(out), None, peak


def bench_latency(args):
    import shutil
    import statistics
    import tempfile

    from export.exporter import FORMATS

    norms = args.norm.split(",")
    formats = args.formats.split(",")
    unknown = [f for f in formats if f not in BENCH_FORMATS]
    if unknown:
        raise SystemExit(f"error: unknown format(s) {unknown}; expected some of {', '.join(BENCH_FORMATS)}")
    limit = args.memory_limit_mb or default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-bench-")
    rows = {}
    try:
        # 1. export every mode (each in a guarded child: conversion and verification memory
        #    is released between modes, and an out-of-memory mode fails alone)
        for norm in norms:
            out, npz = os.path.join(tmp, norm), os.path.join(tmp, f"{norm}.npz")
            info, error, peak = call_guarded("export.bench", "export_for_bench",
                                             (args.preset, norm, formats, out, npz), limit)
            print(f"[{norm}] exported (peak {peak:.0f} MB)" if info else
                  f"[{norm}] export failed: {error}", file=sys.stderr)
            for fmt in formats:
                row = {"norm": norm, "format": fmt, "params": None, "macs": None, "size_bytes": None,
                       "median_ms": None, "peak_rss_mb": None, "export_peak_rss_mb": peak,
                       "round_ms": []}
                if info is None:
                    row["error"] = "export: " + error
                else:
                    path = os.path.join(out, FORMATS[BENCH_FORMATS[fmt]])
                    size = (os.path.getsize(path) if os.path.isfile(path) else
                            sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs))
                    row.update(params=info["params"], macs=info["macs"], size_bytes=size, path=path, npz=npz)
                rows[(norm, fmt)] = row
        # 2. time: rounds interleave the modes, so load from other processes hits them alike
        for rnd in range(args.rounds):
            for fmt in formats:
                for norm in norms:
                    row = rows[(norm, fmt)]
                    if "error" in row:
                        continue
                    r, error, peak = call_guarded(
                        "export.bench", "time_model",
                        (row["path"], fmt, row["npz"], args.threads, args.repeats, args.warmup), limit)
                    if error:
                        row["error"] = error
                        row["peak_rss_mb"] = peak
                        continue
                    row["round_ms"].append(r["median_ms"])
                    row["peak_rss_mb"] = max(row["peak_rss_mb"] or 0.0, r["peak_rss_mb"])
                    print(f"[round {rnd + 1}/{args.rounds} {norm} {fmt}] {r['median_ms']:.1f} ms, "
                          f"peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
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
    for r in results:
        r["ratio_to_none"] = (r["median_ms"] / base[r["format"]]
                              if r["median_ms"] and r["format"] in base else None)
    return {"preset": args.preset, "threads": args.threads, "repeats": args.repeats,
            "rounds": args.rounds, "memory_limit_mb": round(limit),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "results": results}


# -- per-op profiles ----------------------------------------------------------------------
# perf symbols of the LiteRT/XNNPACK kernels -> the TFLite op they implement
TFLITE_KERNELS = (
    ("igemm", "CONV_2D"), ("gemm", "CONV_2D"), ("conv", "CONV_2D"), ("vmul", "MUL"), ("vadd", "ADD"),
    ("vlrelu", "LEAKY_RELU"), ("tanh", "TANH"), ("gather", "GATHER"), ("memmove", "GATHER/copy (memcpy)"),
    ("memcpy", "GATHER/copy (memcpy)"), ("resize", "RESIZE_NEAREST"), ("one_hot", "ONE_HOT"),
    ("pack", "weight packing"), ("quantize", "QUANTIZE"), ("dequantize", "DEQUANTIZE"),
)


def ort_op_profile(path, inputs_npz, threads, repeats, warmup):
    """Child-process job: onnxruntime's profiler, kernel ms per op type per run (timed runs only)."""
    import collections

    import numpy as np

    data = dict(np.load(inputs_npz))
    sess, call = _ort_run(path, data, threads, os.path.join(os.path.dirname(path), "ort_profile"))
    for _ in range(warmup):
        call()
    median = _median_ms(call, repeats)
    with open(sess.end_profiling()) as f:
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
    """Child-process job: warm up, print READY, wait for a line on stdin, then time the calls."""
    import numpy as np

    invoke = _tflite_invoke(path, dict(np.load(inputs_npz)), threads)
    for _ in range(warmup):
        invoke()
    print("READY", flush=True)
    sys.stdin.readline()
    return {"median_ms": _median_ms(invoke, repeats)}


def tflite_op_profile(path, inputs_npz, threads, repeats, warmup):
    """Samples the LiteRT process with `perf` (attached after warm-up, so loading and
    weight packing are excluded) and maps kernel symbols to TFLite ops. LiteRT's own
    op profiler is the C++ benchmark_model tool, which the ai-edge-litert wheel does
    not ship; XNNPACK's kernels are named by op, so the symbol profile is per op."""
    import collections
    import shutil
    import subprocess
    import tempfile

    if shutil.which("perf") is None:
        return {"error": "perf is not installed; no TFLite per-op profile"}
    code = ("import json; from export.bench import tflite_invoke_loop; "
            f"print(json.dumps(tflite_invoke_loop({path!r}, {inputs_npz!r}, {threads}, {repeats}, {warmup})))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, cwd=root)
        if child.stdout.readline().strip() != "READY":
            child.kill()
            return {"error": "the TFLite child failed before profiling"}
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-p", str(child.pid), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let perf attach
        child.stdin.write("go\n")
        child.stdin.flush()
        out = child.stdout.read()
        child.wait()
        perf.wait(timeout=60)
        rep = subprocess.run(["perf", "report", "-i", data, "--sort", "symbol", "--stdio"],
                             capture_output=True, text=True).stdout
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
    """Per-op profiles of the exported tflite-fp32 (perf) and onnx (onnxruntime profiler)."""
    import shutil
    import tempfile

    norms = args.norm.split(",")
    limit = default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-ops-")
    result = {"preset": args.preset, "threads": args.threads, "repeats": args.repeats, "modes": {}}
    try:
        for norm in norms:
            out, npz = os.path.join(tmp, norm), os.path.join(tmp, f"{norm}.npz")
            _, error, _ = call_guarded("export.bench", "export_for_bench",
                                       (args.preset, norm, ["tflite-fp32", "onnx"], out, npz), limit)
            if error:
                result["modes"][norm] = {"error": error}
                continue
            onnx, error, _ = call_guarded("export.bench", "ort_op_profile",
                                          (os.path.join(out, "model.onnx"), npz, args.threads, args.repeats,
                                           args.warmup), limit)
            onnx = onnx or {"error": error}
            tfl = tflite_op_profile(os.path.join(out, "model_fp32.tflite"), npz, args.threads, args.repeats,
                                    args.warmup)
            result["modes"][norm] = {"onnx": onnx, "tflite-fp32": tfl}
            print(f"[{norm}] profiled", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def print_ops(result):
    modes = result["modes"]
    print(f"per-op profile, preset {result['preset']}, {result['threads']} threads")
    for fmt, key in (("onnx", "ops"), ("tflite-fp32", "cpu_share_pct")):
        print(f"\n{fmt}: kernel ms per run (onnxruntime profiler)" if fmt == "onnx" else
              f"\n{fmt}: share of the process's CPU time during the timed invokes, % (perf)")
        ok = {m: r[fmt] for m, r in modes.items() if fmt in r and "error" not in r[fmt]}
        for m, r in modes.items():
            if fmt in r and "error" in r[fmt]:
                print(f"  {m}: {r[fmt]['error']}")
        if not ok:
            continue
        print(f"  {'op':<34}" + "".join(f"{m:>14}" for m in ok))
        print(f"  {'median ms / run':<34}" + "".join(f"{r['median_ms']:>14.1f}" for r in ok.values()))
        ops = sorted({o for r in ok.values() for o in r[key]},
                     key=lambda o: -max(_op_value(r[key].get(o)) for r in ok.values()))
        for o in ops:
            vals = [_op_value(r[key].get(o)) for r in ok.values()]
            if max(vals) < 0.05:
                continue
            print(f"  {o:<34}" + "".join(f"{v:>14.2f}" for v in vals))


def _op_value(v):
    if v is None:
        return 0.0
    return v["ms"] if isinstance(v, dict) else v


def plot_latency(result, path):
    from PIL import Image, ImageDraw

    rows = [r for r in result["results"] if r["median_ms"]]
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
    from clade_tf.viz import save_png
    import numpy as np

    save_png(path, np.asarray(img))


def exit_on_sigterm():
    """SIGTERM -> SystemExit, so `finally` blocks kill the running child and remove the
    temporary export directories (else a killed benchmark leaves GBs behind in /tmp)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv=None):
    exit_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "latency", "ops", "-h", "--help"):
        argv = ["latency"] + argv
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="exported-model latency per norm mode and format (default)")
    lat.add_argument("--preset", default="ade20k")
    lat.add_argument("--norm", default="none,clade,clade-icpe,spade", help="comma-separated norm modes")
    lat.add_argument("--formats", default="tflite-fp32,tflite-int8-dynamic,onnx",
                     help="comma-separated: " + ", ".join(BENCH_FORMATS))
    lat.add_argument("--threads", type=int, default=2)
    lat.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    lat.add_argument("--warmup", type=int, default=2)
    lat.add_argument("--rounds", type=int, default=3,
                     help="fresh-process timings per model, interleaved across modes; the median is reported")
    lat.add_argument("--memory-limit-mb", type=float,
                     help="kill a child (export or timing) above this resident memory (default: 75%% of RAM)")
    lat.add_argument("--json", action="store_true")
    lat.add_argument("--plot", metavar="FILE", help="bar chart PNG of latency per mode and format")
    ops = sub.add_parser("ops", help="per-op profiles of tflite-fp32 (perf) and onnx (onnxruntime profiler)")
    ops.add_argument("--preset", default="ade20k")
    ops.add_argument("--norm", default="none,clade", help="comma-separated norm modes")
    ops.add_argument("--threads", type=int, default=2)
    ops.add_argument("--repeats", type=int, default=5)
    ops.add_argument("--warmup", type=int, default=2)
    ops.add_argument("--json", action="store_true")
    t = sub.add_parser("train", help="training steps per second")
    t.add_argument("--preset", default="synthetic")
    t.add_argument("--modes", default="clade,spade", help="comma-separated norm modes")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--steps", type=int, default=10, help="timed steps per round")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.what == "ops":
        result = bench_ops(args)
        print(json.dumps(result) if args.json else "", end="\n" if args.json else "")
        if not args.json:
            print_ops(result)
        return 0
    if args.what == "latency":
        result = bench_latency(args)
        if args.plot:
            plot_latency(result, args.plot)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"latency, preset {result['preset']}, {result['threads']} threads, {result['machine']}")
            print(f"{'norm':<11} {'format':<20} {'params':>12} {'MACs':>16} {'size MB':>8} {'ms':>9} "
                  f"{'x none':>7} {'peak MB':>8} {'export GB':>9}")

            def fmt(value, spec):
                return "-" if value is None else format(value, spec)

            for r in result["results"]:
                ms = fmt(r["median_ms"], ".1f") if r["median_ms"] else "failed"
                size = r["size_bytes"] / 1e6 if r["size_bytes"] is not None else None
                print(f"{r['norm']:<11} {r['format']:<20} {fmt(r['params'], ','):>12} {fmt(r['macs'], ','):>16} "
                      f"{fmt(size, '.1f'):>8} {ms:>9} {fmt(r.get('ratio_to_none'), '.2f'):>7} "
                      f"{fmt(r.get('peak_rss_mb'), '.0f'):>8} {fmt(r['export_peak_rss_mb'] / 1024, '.1f'):>9}")
            for r in result["results"]:
                if r.get("error"):
                    print(f"{r['norm']} {r['format']}: {r['error']}")
        return 0
    result = bench_train(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"train step, preset {result['preset']} {result['image_size'][0]}x{result['image_size'][1]}, "
              f"batch {result['batch_size']}, {result['machine']}")
        for m, r in result["modes"].items():
            print(f"  {m:<11} {r['steps_per_second']:8.3f} steps/s  ({r['seconds_per_step_median']:.3f} s/step, "
                  f"x{r['time_vs_first_mode']:.2f} time vs {next(iter(result['modes']))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
