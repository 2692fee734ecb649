r"""Lookup variants tried for the exported CLADE layer (the record is benchmarks/BENCHMARKS.md).

    python -m benchmarks.variants --preset ade20k --variants base,fused,shared,betas \
        --formats tflite-fp32,onnx --threads 2 --rounds 5 [--pairs N] [--profile] [--json]

Builds the random-weight CLADE generator of the preset (BatchNorm calibrated, as
`benchmarks.latency`) and the `none` backbone, folds them for inference, and for each
variant of how the folded CLADE layers compute `x * gamma[label] + beta[label]`
converts TFLite fp32 and ONNX, checks them against the Keras model (relative L2
<= 1e-4, else the variant is reported as wrong), then times every model in fresh
processes, rounds interleaved across variants, with the ratio to `none`:

- `base`: what `python -m export` ships: per layer two `tf.gather`s (gamma, beta
  tables `[K, C]`) on the label map at the layer's resolution (in TFLite made to run
  after the layer's input), one multiply, one add.
- `fused`: one `[K, 2C]` table per layer, one gather, split into gamma and beta.
- `shared`: one gather per resolution of all tables of the layers at that
  resolution (`[K, sum 2C]`), split per layer.
- `betas`: in blocks with a learned shortcut, beta of `norm_s` pushed through the
  1x1 `conv_s` (no activation between them): `conv_s(x * gamma_s[l]) + (beta_s W_s)[l]`,
  which gathers `fout` instead of `fin` channels for that term.
- `nchwc` (onnx only): each gathered gamma[label] and beta[label] goes through an
  identity 1x1 depthwise conv. onnxruntime's NCHWc transformer keeps a Mul/Add in
  its blocked layout only when both operands come from NCHWc ops (convs); this makes
  them so, so that the multiply-add, the LeakyReLU and the next conv stay blocked
  (no ReorderOutput/ReorderInput around the modulation), at the price of one
  reorder and one depthwise pass per gathered tensor.
- `hoisted` (tflite only): the lookups without their dependency on the layer's input
  (`clade_tf.inference`; what the TFLite export shipped before, and what the ONNX
  export still ships). TFLite then runs every op XNNPACK does not take (the GATHERs)
  as early as their inputs allow: all lookups before the first conv, their outputs
  alive at once.

`--pairs N` also times each variant against `base` in one process, alternating the
order, N pairs: the median per-pair ratio cancels the machine's drift, which the
fresh-process rounds (±10-20 % on a shared box) do not. `--profile` adds each
model's per-op profile (as `benchmarks.ops`).

Each variant is an `InferenceGenerator` subclass whose blocks or folded CLADE norms
compute the lookup differently (`variant_classes`), plugged into the factories the
shipped model is built with; the library's layers are not changed.
"""

import functools
import os
import shutil
import statistics
import sys
import tempfile

from benchmarks.common import add_json_flag, run_benchmark, split
from benchmarks.guard import call_guarded, default_memory_limit_mb
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = ("base", "fused", "shared", "betas", "nchwc", "hoisted")
# an identity conv is pure cost in TFLite; onnx is never ordered (`hoisted` = `base`)
ONLY_IN = {"nchwc": "onnx", "hoisted": "tflite-fp32"}
VARIANT_FORMATS = ("tflite-fp32", "onnx")


@functools.cache
def variant_classes():
    """`{variant: InferenceGenerator subclass}`: each variant built through the factories
    `clade_tf.inference` builds the shipped model with (`InferenceGenerator.block_class`,
    `InferenceResnetBlock.folded_clade_norm`), so the library's layers stay as they are.

    Defined on first use: the classes need TensorFlow, which the guard and the timing
    children never import."""
    import tensorflow as tf

    from clade_tf.inference import (
        FoldedClassAdaptiveNorm,
        InferenceGenerator,
        InferenceResnetBlock,
    )

    class FusedNorm(FoldedClassAdaptiveNorm):
        """One `[K, 2C]` table, one gather, split into gamma and beta."""

        def modulation(self, label, dist=None, dtype="float32"):
            table = tf.concat([self.gamma, self.beta], axis=1)
            return tuple(tf.split(tf.gather(table, label), 2, axis=-1))

    class SharedNorm(FoldedClassAdaptiveNorm):
        """Its gamma[label], beta[label]: a slice of its resolution's one gather (`SharedGenerator`)."""

        shared_lookup = None

        def modulation(self, label, dist=None, dtype="float32"):
            return self.shared_lookup

    class NchwcNorm(FoldedClassAdaptiveNorm):
        """gamma[label] and beta[label] each through an identity 1x1 depthwise conv."""

        def modulation(self, label, dist=None, dtype="float32"):
            ones = tf.ones([1, 1, int(self.gamma.shape[1]), 1])

            def ident(t):
                return tf.nn.depthwise_conv2d(t, ones, [1, 1, 1, 1], "VALID")

            return ident(tf.gather(self.gamma, label)), ident(tf.gather(self.beta, label))

    class BetasBlock(InferenceResnetBlock):
        """With a learned shortcut: beta of `norm_s` pushed through the 1x1 `conv_s`."""

        def call(self, x, cond, training=None):
            if not self.learned_shortcut:
                return super().call(x, cond, training=training)
            lab, norm_s = cond["label"], self.norm_s
            # the folded conv_s is a plain kernel; its first `fin` input channels see
            # the modulated x (an instance-edge channel, if any, comes after them)
            b_s = tf.matmul(norm_s.beta, self.conv_s.kernel[0, 0, :self.fin])  # constant-folded
            h = x * tf.gather(norm_s.gamma, lab)
            if norm_s.use_instance_edge:
                h = tf.concat([h, norm_s.edge_conv(tf.cast(cond["edge"], x.dtype))], axis=-1)
            x_s = self.conv_s(h) + tf.gather(b_s, lab)
            dx = self.conv_0(tf.nn.leaky_relu(self.norm_0(x, cond, training=training), 0.2))
            dx = self.conv_1(tf.nn.leaky_relu(self.norm_1(dx, cond, training=training), 0.2))
            return x_s + dx

    def with_norm(norm):
        return type(f"{norm.__name__}Block", (InferenceResnetBlock,), {"folded_clade_norm": norm})

    def with_blocks(block, name):
        return type(name, (InferenceGenerator,), {"block_class": block})

    class SharedGenerator(InferenceGenerator):
        """One gather per resolution, of all tables of the layers at that resolution."""

        block_class = with_norm(SharedNorm)

        def features(self, inputs, training=None):
            levels = self.pyramid(inputs)
            by_stride = {}
            for blk, s in self.block_strides():
                by_stride.setdefault(s, []).extend(blk.norm_layers())
            for s, group in by_stride.items():
                tables = [t for n in group for t in (n.gamma, n.beta)]
                parts = tf.split(tf.gather(tf.concat(tables, axis=1), levels[s]["label"]),
                                 [int(t.shape[1]) for t in tables], axis=-1)
                for i, n in enumerate(group):
                    n.shared_lookup = (parts[2 * i], parts[2 * i + 1])
            return super().features(inputs, training=training)

    return {
        "base": InferenceGenerator,
        "fused": with_blocks(with_norm(FusedNorm), "FusedGenerator"),
        "shared": SharedGenerator,
        "betas": with_blocks(BetasBlock, "BetasGenerator"),
        "nchwc": with_blocks(with_norm(NchwcNorm), "NchwcGenerator"),
        "hoisted": InferenceGenerator,  # the same model, traced without ordered lookups
    }


def trace_variant(generator, variant, ordered_lookups=True):
    """A serving function of `generator` folded for inference with the CLADE lookup
    computed as `variant`, for TFLite (lookups ordered after their layer's input, as
    exported) or not."""
    from clade_tf.export import serving_function
    from clade_tf.inference import fold_for_inference

    classes = variant_classes()
    if variant not in classes:
        raise ValueError(f"unknown variant {variant!r}; expected some of {', '.join(VARIANTS)}")
    folded = fold_for_inference(generator, into=classes[variant])
    return serving_function(folded, 1, ordered_lookups=ordered_lookups and variant != "hoisted")


def variant_formats(variant, formats):
    """The formats `variant` is built and timed in."""
    return [f for f in formats if ONLY_IN.get(variant, f) == f]


def build_variant(preset_name, variant, formats, out_dir):
    """Child-process job: writes the variant's models and inputs, returns their errors."""
    import numpy as np
    import tensorflow as tf

    from benchmarks.common import random_generator
    from clade_tf.export import (
        FORMATS,
        compare,
        example_inputs,
        load_runner,
        write_format,
    )
    from clade_tf.export.exporter import FP32_TOLERANCE
    from clade_tf.presets import get_preset

    cfg = get_preset(preset_name).generator_config("none" if variant == "none" else "clade")
    g = random_generator(cfg)
    inputs = example_inputs(cfg, 1, seed=3)[0]
    reference = g({k: tf.constant(v) for k, v in inputs.items()}, training=False).numpy()
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "inputs.npz"), **inputs)
    errors = {}
    for fmt in variant_formats(variant, formats):
        path = os.path.join(out_dir, FORMATS[fmt])
        write_format(fmt, path, *trace_variant(g, "base" if variant == "none" else variant, fmt != "onnx"))
        errors[fmt] = compare(load_runner(path)(inputs), reference)[0]
        if errors[fmt] > FP32_TOLERANCE:
            raise SystemExit(f"{variant} {fmt}: relative L2 {errors[fmt]:.2e} vs Keras")
    return errors


def pair_variants(result, tmp, args, limit):
    """Adds `paired_to_base`: each variant against `base` of the same format in one process,
    alternating (`benchmarks.common.time_pair`)."""
    from clade_tf.export import FORMATS

    for v, per_format in result["variants"].items():
        if v == "base":
            continue
        for fmt, r in per_format.items():
            if fmt not in result["variants"].get("base", {}):
                continue
            paths = [os.path.join(tmp, w, FORMATS[fmt]) for w in ("base", v)]
            npzs = [os.path.join(tmp, w, "inputs.npz") for w in ("base", v)]
            pair, error, _ = call_guarded("benchmarks.common", "time_pair",
                                          (paths, npzs, args.threads, args.pairs, args.warmup), limit)
            r["paired_to_base"] = pair or {"error": error}
        print(f"[{v}] paired with base", file=sys.stderr)


def profile_variants(result, tmp, args, limit):
    """Adds each model's per-op profile (`benchmarks.ops`: onnxruntime's profiler, perf
    samples for TFLite) under `profile`, after the timed rounds."""
    from benchmarks.ops import tflite_op_profile
    from clade_tf.export import FORMATS

    for v, per_format in result["variants"].items():
        npz = os.path.join(tmp, v, "inputs.npz")
        for fmt, r in per_format.items():
            path = os.path.join(tmp, v, FORMATS[fmt])
            if fmt == "onnx":
                prof, error, _ = call_guarded("benchmarks.ops", "ort_op_profile",
                                              (path, npz, args.threads, args.repeats, args.warmup), limit)
                r["profile"] = prof or {"error": error}
            else:
                r["profile"] = tflite_op_profile(path, npz, args.threads, args.repeats, args.warmup)
        print(f"[{v}] profiled", file=sys.stderr)


def format_pairs(result):
    lines = []
    for v, per_format in result["variants"].items():
        for fmt, r in per_format.items():
            p = r.get("paired_to_base")
            if p is None:
                continue
            lines.append(f"  {fmt:<12} {v:<7} / base in one process: " + (
                p["error"] if "error" in p else
                f"x{p['ratio']:.3f} (quartiles {p['quartiles'][0]:.3f}-{p['quartiles'][1]:.3f}, "
                f"{p['pairs']} pairs)"))
    return lines


def format_profiles(result):
    """Per format, one column per variant: onnxruntime kernel ms per run, TFLite % of CPU."""
    from benchmarks.ops import op_value

    lines = []
    for fmt in result["formats"]:
        cols = {v: r[fmt]["profile"] for v, r in result["variants"].items()
                if fmt in r and "profile" in r[fmt]}
        if not cols:
            continue
        unit = "kernel ms per run" if fmt == "onnx" else "% of CPU time"
        lines.append(f"  per-op profile, {fmt} ({unit})")
        lines += [f"    {v}: {p['error']}" for v, p in cols.items() if "error" in p]
        ok = {v: (p["ops"] if fmt == "onnx" else p["cpu_share_pct"]) for v, p in cols.items() if "error" not in p}
        if not ok:
            continue
        lines.append(f"    {'op':<32}" + "".join(f"{v:>10}" for v in ok))
        for o in sorted({o for ops in ok.values() for o in ops}, key=lambda o: -max(
                op_value(ops.get(o)) for ops in ok.values())):
            vals = [op_value(ops.get(o)) for ops in ok.values()]
            if max(vals) >= 0.05:
                lines.append(f"    {o:<32}" + "".join(f"{x:>10.2f}" for x in vals))
    return lines


def parse_args(argv=None):
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.variants", description=__doc__)
    p.add_argument("--preset", default="ade20k", choices=sorted(PRESETS),
                   help="dataset preset whose CLADE generator is measured")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, some of: " + ", ".join(VARIANTS) + " (`none` is always timed)")
    p.add_argument("--formats", default=",".join(VARIANT_FORMATS),
                   help="comma-separated, some of: " + ", ".join(VARIANT_FORMATS))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    p.add_argument("--rounds", type=int, default=5,
                   help="fresh-process timings per model, interleaved across variants; the median is reported")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per process before the timed ones")
    p.add_argument("--memory-limit-mb", type=float,
                   help="kill a child (build or timing) above this resident memory (None: 75%% of RAM)")
    p.add_argument("--pairs", type=int, default=0,
                   help="after the rounds, time each variant against `base` in one process, this many "
                        "alternating pairs (0: no pairing)")
    p.add_argument("--profile", action="store_true",
                   help="after the timed rounds, profile every model per op (as `benchmarks.ops`)")
    add_json_flag(p)
    args = p.parse_args(argv)
    bad = [v for v in split(args.variants) if v not in VARIANTS + ("none",)]
    if bad:
        p.error(f"--variants: unknown {bad}; expected some of {', '.join(VARIANTS)}")
    bad = [f for f in split(args.formats) if f not in VARIANT_FORMATS]
    if bad:
        p.error(f"--formats: unknown {bad}; expected some of {', '.join(VARIANT_FORMATS)}")
    return args


def bench_variants(args):
    from clade_tf.export import FORMATS

    variants = ["none"] + [v for v in split(args.variants) if v != "none"]
    formats = split(args.formats)
    limit = args.memory_limit_mb or default_memory_limit_mb()
    tmp = tempfile.mkdtemp(prefix="clade-variants-")
    result = {"preset": args.preset, "threads": args.threads, "rounds": args.rounds, "formats": formats,
              "variants": {}}
    try:
        for v in variants:
            out = os.path.join(tmp, v)
            errors, error, _ = call_guarded("benchmarks.variants", "build_variant",
                                            (args.preset, v, formats, out), limit)
            if error:
                raise SystemExit(f"error: variant {v}: {error}")
            result["variants"][v] = {f: {"rel_l2": e, "round_ms": []} for f, e in errors.items()}
            print(f"[{v}] built", file=sys.stderr)
        for _ in range(args.rounds):
            for fmt in formats:
                for v in (v for v in variants if fmt in result["variants"][v]):
                    path = os.path.join(tmp, v, FORMATS[fmt])
                    npz = os.path.join(tmp, v, "inputs.npz")
                    r, error, _ = call_guarded("benchmarks.common", "time_model",
                                               (path, npz, args.threads, args.repeats, args.warmup), limit)
                    if error:
                        raise SystemExit(f"error: timing {v} {fmt}: {error}")
                    result["variants"][v][fmt]["round_ms"].append(r["median_ms"])
        if args.pairs:
            pair_variants(result, tmp, args, limit)
        if args.profile:
            profile_variants(result, tmp, args, limit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for fmt in formats:
        base = statistics.median(result["variants"]["none"][fmt]["round_ms"])
        for v in (v for v in variants if fmt in result["variants"][v]):
            r = result["variants"][v][fmt]
            r["median_ms"] = statistics.median(r["round_ms"])
            r["ratio_to_none"] = r["median_ms"] / base
    return result


def format_table(result):
    lines = [(f"CLADE lookup variants, preset {result['preset']}, {result['threads']} threads, "
             f"median of {result['rounds']} interleaved rounds")]
    for fmt in result["formats"]:
        for v, per_format in result["variants"].items():
            if fmt not in per_format:
                continue
            r = per_format[fmt]
            lines.append(f"  {fmt:<12} {v:<7} {r['median_ms']:8.1f} ms  x{r['ratio_to_none']:.3f}  "
                         f"rel_l2 {r['rel_l2']:.1e}  rounds {' '.join(f'{x:.0f}' for x in r['round_ms'])}")
    return "\n".join(lines + format_pairs(result) + format_profiles(result))


def main(argv=None):
    return run_benchmark(argv, parse_args, bench_variants, format_table)


if __name__ == "__main__":
    sys.exit(main())
