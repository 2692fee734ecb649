r"""Training speed: optimizer steps per second of the full GAN step per norm mode and precision.

    python -m benchmarks.train_step --preset synthetic,ade20k --modes clade,spade \
        [--precisions float32,float16,bfloat16] [--xla off|on|both] [--steps 10] [--rounds 3] \
        [--warmup 2] [--batch-size N] [--official DIR --torch-python PYTHON] [--json]

One step is `CladeGAN.train_step` (one generator and one discriminator update, no
VGG) of the GAN that `python -m train` builds (`clade_tf.gan.build_gan` of the
preset's run configuration), on a fixed random batch at the preset's size and class
count (data loading excluded). Every (mode, precision) pair is a row, all built
(and traced) in one process before any is warmed up or timed; rounds interleave the
rows so that load from other processes hits them alike. Reported: the median and best seconds per step over rounds and each
row's time relative to the first row of its preset.

`--official DIR` adds, per preset and mode, a row for the official PyTorch step (a
local copy of github.com/tzt101/CLADE, run by `--torch-python`, a Python with torch
and torchvision; see `benchmarks.official_step`) at the same size, classes, widths
and batch, without the VGG loss as here, on the same batch. Its process stays up
and its rounds interleave with ours.

`--precisions` (alias `--mixed-precision`) takes `float32`, `float16`
(`mixed_float16`, with loss scaling) and `bfloat16` (`mixed_bfloat16`). A mixed row
checks that the GAN really is mixed precision (float32 variables, conv / dense layers
computing in the policy's dtype); a row that fails to build, is not mixed precision,
or fails to train reports why in one line and the other rows run on.
"""

import json
import logging
import math
import os
import re
import sys
import time

from benchmarks.common import add_json_flag, machine, run_benchmark, split
from benchmarks.guard import ROOT
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PRECISIONS = ("float32", "float16", "bfloat16")


def one_line(e):
    """An exception as one line. A traced function's error message starts with the
    user-code traceback ("in user code: ..."); its cause is the last `XError: ...` line
    (and, for a Keras layer error, the line after it), its place the first frame."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # Keras bolds the message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if re.match(r"\w+(Error|Exception): ", line)]
    if not errors:
        return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]
    i = errors[-1]
    msg = lines[i]
    if "Exception encountered when calling" in msg and i + 1 < len(lines):
        msg = f"{msg.split(':')[0]}: {lines[i + 1]}"
    frame = re.search(r'File "([^"]+)", line (\d+), in (\w+)', text)
    if frame:
        msg += f" (in {frame.group(3)}, {os.path.relpath(frame.group(1), ROOT)}:{frame.group(2)})"
    return msg[:240]


def random_batch(cfg, batch_size, seed=0):
    """The generator's input maps (blocky labels, instances, ICPE maps as its config
    needs them) and random images in [-1, 1]."""
    import numpy as np
    import tensorflow as tf

    from clade_tf.export import example_inputs

    g = cfg.generator
    maps = example_inputs(g, batch_size, seed=seed)[0]
    batch = {k: maps[k] for k in g.data_keys}
    rng = np.random.default_rng(seed)
    batch["image"] = rng.uniform(-1, 1, (batch_size, g.image_height, g.image_width, 3)).astype(np.float32)
    return {k: tf.constant(v) for k, v in batch.items()}


def precision_check(gan, precision):
    """`(error or None, [names of conv / dense layers computing in float32])`.

    Keras gives a layer's dtype policy to that layer only, so a model built with a
    mixed policy may still compute in float32 inside: count where the work is done.
    """
    if precision == "float32":
        return None, []
    want = precision  # the compute dtype of mixed_float16 / mixed_bfloat16
    nets = [gan.generator, gan.discriminator] + ([gan.encoder] if gan.encoder is not None else [])
    not_f32 = [v.path for n in nets for v in n.weights if v.dtype != "float32"]
    if not_f32:
        return f"not mixed precision: {len(not_f32)} variables are not float32 ({not_f32[0]}, ...)", []
    compute = [(layer.kernel.path.rsplit("/", 1)[0], layer.compute_dtype)
               for n in nets for layer in n._flatten_layers(include_self=False)
               if getattr(layer, "kernel", None) is not None]
    in_f32 = [name for name, dtype in compute if dtype != want]
    if 2 * len(in_f32) > len(compute):  # mostly float32: timing it as mixed would mislead
        return f"not mixed precision: {len(in_f32)} of {len(compute)} conv/dense layers compute in float32", in_f32
    return None, in_f32


def build(preset, mode, precision, batch_size, xla=False):
    """`(step function, batch, row facts)` of one (mode, precision, XLA) row."""
    import keras
    import tensorflow as tf

    from clade_tf.config import OptimConfig
    from clade_tf.gan import build_gan

    keras.utils.set_random_seed(0)
    optim = OptimConfig(batch_size=batch_size, mixed_precision=None if precision == "float32" else precision)
    cfg = preset.run_config(mode, optim=optim)
    gan = build_gan(cfg)
    facts = {"dtype_policy": optim.dtype_policy,
             "generator_compute_dtype": gan.generator.compute_dtype,
             "generator_variable_dtype": gan.generator.variable_dtype}
    error, in_f32 = precision_check(gan, precision)
    if in_f32:
        facts["layers_in_float32"] = in_f32
    if error:
        raise RuntimeError(error)
    return tf.function(gan.train_step, jit_compile=xla), random_batch(cfg, batch_size), facts


class _RetracingWarnings(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing":
    every row traces its own step function once, by design."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def official_options(cfg, batch_size):
    """The official `train.py` options of the run configuration `cfg` (the step of this
    benchmark: no VGG loss, CPU)."""
    g, d, data = cfg.generator, cfg.discriminator, cfg.data
    if g.norm_mode not in ("clade", "clade-icpe", "spade") or g.use_vae:
        raise ValueError(f"the official code has no {g.norm_mode}{' VAE' if g.use_vae else ''} generator")
    opts = ["--name", "bench", "--gpu_ids", "-1", "--dataset_mode", "custom", "--label_dir", ".",
            "--image_dir", ".", "--preprocess_mode", "fixed", "--label_nc", str(data.label_nc),
            "--crop_size", str(g.image_width), "--load_size", str(g.image_width),
            "--aspect_ratio", str(g.image_width / g.image_height), "--batchSize", str(batch_size),
            "--ngf", str(g.ngf), "--ndf", str(d.ndf), "--num_D", str(d.num_d), "--n_layers_D", str(d.n_layers),
            "--num_upsampling_layers", g.num_upsampling_layers,
            "--norm_mode", "spade" if g.norm_mode == "spade" else "clade", "--no_vgg_loss"]
    if data.contain_dontcare:
        opts.append("--contain_dontcare_label")
    if not g.use_instance:
        opts.append("--no_instance")
    if g.norm_mode == "clade-icpe":
        opts.append("--add_dist")
    return opts


class OfficialStep:
    """The official step in a child process (`benchmarks.official_step`), driven a round
    at a time so that its rounds interleave with ours."""

    def __init__(self, python, official, cfg, batch, batch_size, workdir):
        import subprocess

        import numpy as np

        npz = os.path.join(workdir, f"batch-{len(os.listdir(workdir))}.npz")
        np.savez(npz, **{k: v.numpy() for k, v in batch.items()})
        self.proc = subprocess.Popen(
            [python, "-m", "benchmarks.official_step", "--official", official, "--batch", npz,
             "--threads", str(os.cpu_count()), "--", *official_options(cfg, batch_size)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.facts = self._answer()

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            err = [x for x in self.proc.stderr.read().splitlines() if x.strip()]
            raise RuntimeError("the official step stopped: " + (err[-1] if err else f"exit {self.proc.wait()}"))
        return json.loads(line)

    def run(self, steps):
        """`(seconds for `steps` steps, last generator loss)`."""
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        r = self._answer()
        return r["seconds"], r["loss"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("0\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, ValueError, TimeoutError):
                self.proc.kill()


def _ours(step):
    fn, batch = step

    def run(steps):
        t = time.perf_counter()
        for _ in range(steps):
            logs = fn(batch)
        loss = float(logs["G_total"])  # waits for the result
        return time.perf_counter() - t, loss
    return run


def bench_train(args):
    import gc
    import tempfile

    import tensorflow as tf

    from clade_tf.presets import get_preset

    tf.get_logger().addFilter(_RetracingWarnings())
    presets = split(args.preset)
    xla_modes = {"off": [False], "on": [True], "both": [False, True]}[args.xla]
    keys = [(pr, "ours", m, p, x) for pr in presets for m in split(args.modes)
            for p in split(args.precisions) for x in xla_modes]
    bad = sorted({k[3] for k in keys} - set(PRECISIONS))
    if bad:
        raise SystemExit(f"error: --precisions {','.join(bad)}: expected some of {', '.join(PRECISIONS)}")
    if args.official:
        keys += [(pr, "official", m, "float32", False) for pr in presets for m in split(args.modes)]
    rows, runners, officials = {}, {}, []
    workdir = tempfile.mkdtemp(prefix="clade-train-step-")
    try:
        for key in keys:
            pr, impl, mode, precision, xla = key
            preset = get_preset(pr)
            batch_size = args.batch_size or preset.batch_size
            row = rows[key] = {"preset": pr, "image_size": [preset.image_height, preset.image_width],
                               "batch_size": batch_size, "impl": impl, "mode": mode, "precision": precision,
                               "xla": xla, "round_seconds_per_step": []}
            name = f"{pr} {impl} {mode} {precision}{' xla' if xla else ''}"
            t = time.time()
            try:
                if impl == "ours":
                    fn, batch, facts = build(preset, mode, precision, batch_size, xla)
                    row.update(facts)
                    float(fn(batch)["G_total"])  # traces
                    runners[key] = _ours((fn, batch))
                else:
                    cfg = preset.run_config(mode)
                    off = OfficialStep(args.torch_python, args.official, cfg,
                                       random_batch(cfg, batch_size), batch_size, workdir)
                    officials.append(off)
                    row.update(torch=off.facts.get("torch"), torch_threads=off.facts.get("threads"))
                    off.run(1)  # first step: allocations
                    runners[key] = off.run
                print(f"[{name}] built and traced in {time.time() - t:.1f}s", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 (a row that cannot build or train fails alone)
                row["error"] = one_line(e)
                print(f"[{name}] failed: {row['error']}", file=sys.stderr)
                gc.collect()
        # Warm up only now: building a row reseeds TensorFlow, after which the next call of
        # every step function built before is slow again (seconds), as in its first round.
        for key, run in list(runners.items()):
            try:
                if args.warmup:
                    run(args.warmup)
            except Exception as e:  # noqa: BLE001 (a row that fails its warm-up stops alone)
                rows[key]["error"] = one_line(e)
                del runners[key]
        for rnd in range(args.rounds):
            for key in keys:
                if key not in runners:
                    continue
                try:
                    seconds, loss = runners[key](args.steps)
                except Exception as e:  # noqa: BLE001 (a row failing later on, e.g. after a retrace, stops alone)
                    rows[key]["error"] = one_line(e)
                    del runners[key]
                    continue
                rows[key]["round_seconds_per_step"].append(seconds / args.steps)
                print(f"[round {rnd + 1}/{args.rounds} {' '.join(str(k) for k in key)}] "
                      f"{seconds / args.steps:.3f} s/step", file=sys.stderr)
                if math.isnan(loss):  # the speed is still measured, but say so
                    rows[key]["note"] = "the generator loss is NaN"
    finally:
        for off in officials:
            off.close()
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    base = {}
    for row in rows.values():
        times = row["round_seconds_per_step"]
        if not times or "error" in row:
            continue
        med = sorted(times)[len(times) // 2]
        first = base.setdefault(row["preset"], (med, row))
        row.update(seconds_per_step_median=med, seconds_per_step_best=min(times),  # least disturbed round
                   steps_per_second=1.0 / med, time_vs_first=med / first[0])
    return {"benchmark": "train_step", "presets": presets, "steps_per_round": args.steps,
            "rounds": args.rounds, "machine": machine(), "rows": list(rows.values())}


def row_name(r):
    return f"{r['impl']:<8} {r['mode']:<11} {r['precision']:<9}" + (" xla" if r.get("xla") else "    ")


def format_table(result):
    lines = [f"train step, {result['machine']}, {result['rounds']} rounds of {result['steps_per_round']} steps"]
    for preset in result["presets"]:
        rows = [r for r in result["rows"] if r["preset"] == preset]
        first = next((r for r in rows if "time_vs_first" in r), None)
        lines.append(f"preset {preset} {rows[0]['image_size'][0]}x{rows[0]['image_size'][1]}, "
                     f"batch {rows[0]['batch_size']}")
        for r in rows:
            if "error" in r:
                lines.append(f"  {row_name(r)} failed: {r['error']}")
                continue
            line = (f"  {row_name(r)} {r['steps_per_second']:8.3f} steps/s  ({r['seconds_per_step_median']:.3f} "
                    f"s/step, best {r['seconds_per_step_best']:.3f}, x{r['time_vs_first']:.2f} time vs "
                    f"{row_name(first).strip()})")
            if r.get("layers_in_float32"):
                line += f"  [{len(r['layers_in_float32'])} conv/dense layers in float32]"
            if r.get("note"):
                line += f"  [{r['note']}]"
            lines.append(line)
    return "\n".join(lines)


def parse_args(argv=None):
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__)
    p.add_argument("--preset", default="synthetic",
                   help="comma-separated dataset presets (image size, classes, network widths, default "
                        "batch size), of: " + ", ".join(sorted(PRESETS)))
    p.add_argument("--modes", default="clade,spade", help="comma-separated norm modes")
    p.add_argument("--precisions", "--mixed-precision", default="float32", metavar="PRECISIONS",
                   help="comma-separated: " + ", ".join(PRECISIONS) + "; each mode runs at each precision")
    p.add_argument("--batch-size", type=int, help="global batch size (None: the preset's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, interleaved across rows")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per row once every row is built (after its tracing step)")
    p.add_argument("--xla", choices=("off", "on", "both"), default="off",
                   help="compile the step with XLA (python -m train --jit-compile); both: a row each")
    p.add_argument("--official", metavar="DIR",
                   help="also time the official PyTorch step: a local copy of github.com/tzt101/CLADE")
    p.add_argument("--torch-python", metavar="PYTHON",
                   help="with --official: a Python that has torch and torchvision")
    add_json_flag(p)
    args = p.parse_args(argv)
    bad = [x for x in split(args.preset) if x not in PRESETS]
    if bad or not split(args.preset):
        p.error(f"--preset {args.preset}: expected some of {', '.join(sorted(PRESETS))}")
    if args.official:
        if not args.torch_python:
            p.error("--official needs --torch-python (a Python that has torch and torchvision)")
        if not os.path.isfile(os.path.join(args.official, "trainers", "pix2pix_trainer.py")):
            p.error(f"--official {args.official}: expected a copy of github.com/tzt101/CLADE "
                    "(trainers/pix2pix_trainer.py not found)")
    return args


def main(argv=None):
    return run_benchmark(argv, parse_args, bench_train, format_table)


if __name__ == "__main__":
    sys.exit(main())
