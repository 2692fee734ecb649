r"""The official PyTorch CLADE training step, timed for `benchmarks.train_step --official`.

    PYTHON_WITH_TORCH -m benchmarks.official_step --official DIR --batch FILE.npz -- OPTIONS...

Runs under a Python that has torch (and torchvision, which the official networks
import); it never imports TensorFlow or `clade_tf`. DIR is a local copy of the
official code (github.com/tzt101/CLADE), which this project does not ship. OPTIONS
are the official training options (`train.py`'s command line) that
`benchmarks.train_step` derives from the same run configuration as its own rows.

One step is the official trainer's `run_generator_one_step` then
`run_discriminator_one_step` on the batch in FILE.npz (the same arrays the
TensorFlow rows train on: `label`, `image`, and `instance` / `dist` when the model
takes them; NHWC from the parent, transposed to NCHW here). The parent drives the
rounds through stdin so that they interleave with its own rows: each line `N` runs
N steps and answers one JSON line `{"seconds": total, "loss": G loss}`; `0` or end
of input stops. The first answer line is `{"ready": ..., "threads": ...}` once the
trainer is built.
"""

import argparse
import json
import os
import sys
import tempfile
import time


def load_batch(path):
    import numpy as np
    import torch

    arrays = np.load(path)
    data = {"label": torch.from_numpy(arrays["label"][:, None].astype(np.int64)),
            "image": torch.from_numpy(np.ascontiguousarray(arrays["image"].transpose(0, 3, 1, 2))),
            "path": ["bench"] * len(arrays["label"])}
    # The official preprocess reads an instance map whether or not it uses it.
    inst = arrays["instance"] if "instance" in arrays else np.zeros_like(arrays["label"])
    data["instance"] = torch.from_numpy(inst[:, None].astype(np.int64))
    # Without ICPE maps the official dataset gives the number 0.
    data["dist"] = (torch.from_numpy(np.ascontiguousarray(arrays["dist"].transpose(0, 3, 1, 2)))
                    if "dist" in arrays else 0)
    return data


def build_trainer(official, options, threads):
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.abspath(official))
    from options.train_options import TrainOptions
    from trainers.pix2pix_trainer import Pix2PixTrainer

    sys.argv = ["train.py", *options]
    return Pix2PixTrainer(TrainOptions().parse())


def step(trainer, data):
    # The official preprocess edits the batch dict in place: give it a fresh one.
    trainer.run_generator_one_step(dict(data))
    trainer.run_discriminator_one_step(dict(data))
    return float(sum(v.mean() for v in trainer.g_losses.values()))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.official_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="local copy of github.com/tzt101/CLADE")
    p.add_argument("--batch", required=True, help=".npz of the batch (NHWC)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("options", nargs=argparse.REMAINDER, help="official training options, after --")
    args = p.parse_args(argv)
    # The official code prints (its options, network sizes): keep stdout for the answers.
    answers, sys.stdout = sys.stdout, sys.stderr
    options = args.options[1:] if args.options[:1] == ["--"] else args.options
    if not os.path.isfile(os.path.join(args.official, "trainers", "pix2pix_trainer.py")):
        raise SystemExit(f"error: --official {args.official}: expected a copy of github.com/tzt101/CLADE "
                         "(trainers/pix2pix_trainer.py not found)")
    with tempfile.TemporaryDirectory(prefix="clade-official-") as ckpt:
        trainer = build_trainer(args.official, [*options, "--checkpoints_dir", ckpt], args.threads)
        data = load_batch(args.batch)
        import torch

        print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__}),
              file=answers, flush=True)
        for line in sys.stdin:
            n = int(line)
            if n <= 0:
                break
            t = time.perf_counter()
            for _ in range(n):
                loss = step(trainer, data)
            print(json.dumps({"seconds": time.perf_counter() - t, "loss": loss}), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
