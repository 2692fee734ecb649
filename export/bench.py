"""Benchmarks (numbers for the README, not tests).

    python -m export.bench train --preset synthetic --modes clade,spade [--steps 20] [--json]

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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="training steps per second")
    t.add_argument("--preset", default="synthetic")
    t.add_argument("--modes", default="clade,spade", help="comma-separated norm modes")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--steps", type=int, default=10, help="timed steps per round")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
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
