"""Parameter / MAC profile of the generator for every norm mode.

    python -m benchmarks.profile --preset ade20k [--use-vae] [--json]

MACs are counted from the traced Keras model (Conv2D and MatMul ops of the
inference graph, batch 1): out_elements x in_channels/groups x kh x kw; biases
and elementwise ops excluded. `elementwise_ops` counts the modulation's own
elementwise operations (CLADE: x*gamma + beta; SPADE: x*(1+gamma) + beta; ICPE
adds the table modulation), normalization itself excluded.
"""

import os
import sys

from benchmarks.common import add_json_flag, run_benchmark
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--preset", default="ade20k", choices=sorted(PRESETS),
                   help="dataset preset whose generator is profiled")
    p.add_argument("--use-vae", action="store_true",
                   help="profile the VAE-mode generator (z -> Dense) instead of label-map input")
    p.add_argument("--param-free-norm", default="syncbatch", choices=("syncbatch", "batch", "instance"),
                   help="parameter-free normalization inside the norm layers")
    add_json_flag(p)
    return p.parse_args(argv)


def run(args):
    from clade_tf.presets import get_preset
    from clade_tf.profiling import profile_modes

    base = get_preset(args.preset).generator_config(
        use_vae=args.use_vae, param_free_norm=args.param_free_norm
    )
    modes = profile_modes(base)
    return {"preset": args.preset, "input": "vae" if args.use_vae else "seg", "modes": modes}


def format_table(result):
    lines = [
        f"Generator profile: preset={result['preset']} input={result['input']} (batch 1)",
        f"{'mode':<11} {'params':>14} {'MACs':>18} {'elementwise':>14} {'params +%':>10} {'MACs +%':>10}",
    ]
    for mode, r in result["modes"].items():
        lines.append(
            f"{mode:<11} {r['params']:>14,} {r['macs']:>18,} {r['elementwise_ops']:>14,} "
            f"{r['params_overhead_pct']:>10.2f} {r['macs_overhead_pct']:>10.2f}"
        )
    lines.append("overheads are relative to 'none' (same backbone, plain affine norm)")
    return "\n".join(lines)


def main(argv=None):
    return run_benchmark(argv, parse_args, run, format_table)


if __name__ == "__main__":
    sys.exit(main())
