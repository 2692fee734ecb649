"""Benchmarks (numbers for the README, not tests).

    python -m export.bench [latency] --preset ade20k --norm none,clade,clade-icpe,spade \
        --formats tflite-fp32,tflite-int8-dynamic,onnx --threads 2 --repeats 10 [--json] [--plot FILE]
    python -m export.bench train --preset synthetic --modes clade,spade [--steps 20] [--json]

`latency` (the default): for each norm mode, build the generator (random weights),
export it with `python -m export`'s verified exporter, and time each format in a
fresh subprocess (median over repeats after warm-up; the subprocess's peak resident
memory is reported), with each mode's latency relative to `none`.

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


def time_model(path, fmt, inputs_npz, threads, repeats, warmup):
    """Runs in a child process: median ms per call and peak RSS."""
    import numpy as np

    data = dict(np.load(inputs_npz))
    if fmt.startswith("tflite"):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=path, num_threads=threads)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], data[d["name"]].astype(d["dtype"]))
        call = it.invoke
    elif fmt == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {x.name: data[x.name] for x in sess.get_inputs()}

        def call():
            sess.run(["image"], feed)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        f = tf.saved_model.load(path).signatures["serving_default"]
        feed = {k: tf.constant(v) for k, v in data.items()}

        def call():
            f(**feed)["image"].numpy()
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    # VmHWM: this process's peak RSS (ru_maxrss would include the parent's size,
    # which survives fork + exec)
    with open("/proc/self/status") as f:
        peak_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    return {"median_ms": sorted(times)[len(times) // 2], "peak_rss_mb": peak_mb}


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


def bench_latency(args):
    import subprocess
    import tempfile

    import numpy as np

    from clade_tf import Generator
    from clade_tf.presets import get_preset
    from clade_tf.profiling import generator_profile
    from export.exporter import FORMATS, example_inputs, export

    preset = get_preset(args.preset)
    norms = args.norm.split(",")
    formats = args.formats.split(",")
    unknown = [f for f in formats if f not in BENCH_FORMATS]
    if unknown:
        raise SystemExit(f"error: unknown format(s) {unknown}; expected some of {', '.join(BENCH_FORMATS)}")
    results = []
    for norm in norms:
        import keras

        keras.utils.set_random_seed(0)
        cfg = preset.generator_config(norm)
        prof = generator_profile(cfg)
        g = Generator(cfg)
        g.build()
        calibrate_batch_norm(g, example_inputs(cfg, 2, seed=4)[0])
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "exp")
            export(g, out, [BENCH_FORMATS[f] for f in formats], batch=1)
            inputs = example_inputs(cfg, 1, seed=3)[0]
            npz = os.path.join(tmp, "inputs.npz")
            np.savez(npz, **inputs)
            for fmt in formats:
                path = os.path.join(out, FORMATS[BENCH_FORMATS[fmt]])
                size = (os.path.getsize(path) if os.path.isfile(path) else
                        sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs))
                code = ("import json, sys; from export.bench import time_model; "
                        f"print(json.dumps(time_model({path!r}, {fmt!r}, {npz!r}, {args.threads}, "
                        f"{args.repeats}, {args.warmup})))")
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                row = {"norm": norm, "format": fmt, "params": prof["params"], "macs": prof["macs"],
                       "size_bytes": size}
                if res.returncode == 0:
                    row.update(json.loads(res.stdout.strip().splitlines()[-1]))
                else:
                    row.update(median_ms=None, peak_rss_mb=None,
                               error=(res.stderr.strip().splitlines() or ["killed"])[-1][:200])
                print(f"[{norm} {fmt}] {row.get('median_ms')} ms", file=sys.stderr)
                results.append(row)
    base = {r["format"]: r["median_ms"] for r in results if r["norm"] == "none" and r["median_ms"]}
    for r in results:
        r["ratio_to_none"] = (r["median_ms"] / base[r["format"]]
                              if r["median_ms"] and r["format"] in base else None)
    return {"preset": args.preset, "threads": args.threads, "repeats": args.repeats,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "results": results}


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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "latency", "-h", "--help"):
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
    lat.add_argument("--repeats", type=int, default=10)
    lat.add_argument("--warmup", type=int, default=2)
    lat.add_argument("--json", action="store_true")
    lat.add_argument("--plot", metavar="FILE", help="bar chart PNG of latency per mode and format")
    t = sub.add_parser("train", help="training steps per second")
    t.add_argument("--preset", default="synthetic")
    t.add_argument("--modes", default="clade,spade", help="comma-separated norm modes")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--steps", type=int, default=10, help="timed steps per round")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.what == "latency":
        result = bench_latency(args)
        if args.plot:
            plot_latency(result, args.plot)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"latency, preset {result['preset']}, {result['threads']} threads, {result['machine']}")
            print(f"{'norm':<11} {'format':<20} {'params':>12} {'MACs':>16} {'size MB':>8} {'ms':>9} "
                  f"{'x none':>7} {'peak MB':>8}")
            for r in result["results"]:
                ms = f"{r['median_ms']:.1f}" if r["median_ms"] else "failed"
                ratio = f"{r['ratio_to_none']:.2f}" if r.get("ratio_to_none") else "-"
                peak = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
                print(f"{r['norm']:<11} {r['format']:<20} {r['params']:>12,} {r['macs']:>16,} "
                      f"{r['size_bytes'] / 1e6:>8.1f} {ms:>9} {ratio:>7} {peak:>8}")
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
