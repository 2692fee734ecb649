"""What the benchmarks share: the command-line frame of every `python -m benchmarks.X`
(`--json`, `run_benchmark`: parse, run, print JSON or the table), the CLI help format,
the random-weight generator the exported-model benchmarks measure, its verified export,
and the timing jobs run in guarded children.

Heavy imports stay inside the functions: a guarded child imports only what its job needs.
"""

import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def add_json_flag(parser, instead="a table"):
    """`--json`: the result as one JSON object on stdout instead of `instead` (progress
    lines go to stderr either way, so the JSON can be piped)."""
    parser.add_argument("--json", action="store_true", help=f"print one JSON object instead of {instead}")


def run_benchmark(argv, parse_args, bench, format_table, table_options=None):
    """The `main()` of a benchmark: `parse_args(argv)`, `bench(args)`, then its result
    printed as one JSON object (`--json`) or as `format_table(result,
    **table_options(args))`; a `bench` that returns None (a preparation mode, e.g.
    `benchmarks.quality --train-segmenter`) prints nothing. A SIGTERM ends the
    benchmark through `SystemExit` (`benchmarks.guard.exit_on_sigterm`), so its guarded
    children and temporary folders go with it. Returns the exit status, 0."""
    from benchmarks.guard import exit_on_sigterm
    from clade_tf.cli import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    exit_on_sigterm()
    args = parse_args(argv)
    result = bench(args)
    if result is not None:
        options = table_options(args) if table_options else {}
        print(json.dumps(result) if args.json else format_table(result, **options))
    return 0


def machine():
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def split(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def median_ms(call, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[repeats // 2]


def size_bytes(path):
    """A file's size, or the total of a directory's files (SavedModel)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def random_generator(cfg):
    """A random-weight generator (seed 0) with its BatchNorm statistics calibrated on one
    batch: with the initial statistics (0, 1) it would run unnormalized and its
    activations explode, which is not what a trained model computes."""
    import keras

    from clade_tf import Generator
    from clade_tf.export import example_inputs
    from clade_tf.inference import calibrate_batch_norm

    keras.utils.set_random_seed(0)
    g = Generator(cfg)
    g.build()
    calibrate_batch_norm(g, example_inputs(cfg, 2, seed=4)[0])
    return g


def export_for_bench(preset_name, norm, formats, out_dir, inputs_npz, official_weights=None):
    """Child-process job: the preset's random-weight generator in `norm` mode (or, with
    `official_weights`, an official generator state dict imported by `clade_tf.torchio.convert`),
    exported and verified by `clade_tf.export.export`; writes the timing inputs (batch 1)
    to `inputs_npz`; returns the generator's params and MACs."""
    import numpy as np

    from clade_tf.export import example_inputs, export
    from clade_tf.presets import get_preset
    from clade_tf.profiling import generator_profile

    cfg = get_preset(preset_name).generator_config(norm)
    prof = generator_profile(cfg)
    if official_weights:
        from clade_tf import Generator
        from clade_tf.torchio.convert import load_generator
        from clade_tf.torchio.reader import load_state_dict

        g = Generator(cfg, name="generator")
        g.build()
        load_generator(g, load_state_dict(official_weights))
    else:
        g = random_generator(cfg)
    export(g, out_dir, list(formats), batch=1)
    np.savez(inputs_npz, **example_inputs(cfg, 1, seed=3)[0])
    return {"params": prof["params"], "macs": prof["macs"]}


def peak_rss_mb():
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's
    size, which survives fork + exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def load_runner(path, threads=None, profile_prefix=None):
    """`clade_tf.export.load_runner`. Importing `clade_tf.export.runtime` imports numpy only
    (each runtime when a model needs it), not TensorFlow, ~600 MB resident, which would
    count in the peak memory reported for LiteRT and onnxruntime: a deployed model does not
    carry TensorFlow (tests/test_exportdir.py checks it)."""
    from clade_tf.export.runtime import load_runner as load

    return load(path, threads=threads, profile_prefix=profile_prefix)


def time_model(path, inputs_npz, threads, repeats, warmup):
    """Child-process job: median ms of one call of the exported model's runner
    (`clade_tf.export.load_runner`) on the batch-1 inputs, and this process's peak RSS."""
    import numpy as np

    data = dict(np.load(inputs_npz))
    runner = load_runner(path, threads=threads)
    for _ in range(warmup):
        runner(data)
    median = median_ms(lambda: runner(data), repeats)
    return {"median_ms": median, "peak_rss_mb": peak_rss_mb()}


def time_pair(paths, npzs, threads, pairs, warmup):
    """Child-process job: two models in one process, called in alternating order (AB, BA,
    ...) `pairs` times; the per-pair ratios B / A cancel the machine's drift, which
    fresh-process rounds do not. Returns their median and quartiles and each model's
    median ms."""
    import statistics

    import numpy as np

    data = [dict(np.load(n)) for n in npzs]
    runners = [load_runner(p, threads=threads) for p in paths]
    for _ in range(warmup):
        for r, d in zip(runners, data):
            r(d)
    ms = ([], [])
    for i in range(pairs):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            runners[k](data[k])
            ms[k].append((time.perf_counter() - t) * 1000)
    ratios = [b / a for a, b in zip(*ms)]
    q = statistics.quantiles(ratios, n=4) if pairs > 1 else [ratios[0]] * 3
    return {"ratio": q[1], "quartiles": [q[0], q[2]], "pairs": pairs,
            "median_ms": [statistics.median(m) for m in ms]}

