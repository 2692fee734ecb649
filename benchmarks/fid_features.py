r"""FID feature speed: images per second from uint8 images in memory to 2048-d pool3
features, ours and (optionally) pytorch-fid's on the same images in the same run.

    python -m benchmarks.fid_features [--images 500] [--size 256x256] [--batch-size 50] \
        [--weights pt_inception-2015-12-05-6726825d.pth] [--torch-python PATH] \
        [--rounds 1] [--json]

Ours: `clade_tf.metrics.fid_inception` (BatchNorm folded into the convs) through
`clade_tf.metrics.extract_features`, which converts, resizes to 299x299 and runs the
network. pytorch-fid: with `--torch-python`, a Python that has torch and pytorch-fid runs
its `InceptionV3([3])` on the same images (uint8 -> float / 255 -> the model, which
resizes) in a child process, so this project never imports torch. Each side traces or
warms up on one batch first; the timed run covers all images. With `--rounds` > 1 the
two alternate and the median is reported, so load from other processes hits both alike.

Without `--weights` both networks have random weights (the speed is the same; the
features mean nothing), and the output says so. With `--weights` both load that file
and the features of the first batch are compared (relative L2).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import add_json_flag, machine, run_benchmark
from clade_tf.cli import ArgumentParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Runs in the torch child: argv[1] is a JSON object of the arguments.
TORCH_CHILD = r"""
import json, sys, time
import numpy as np
import torch
from pytorch_fid import inception as pi

args = json.loads(sys.argv[1])
if args["weights"]:
    state = torch.load(args["weights"], map_location="cpu", weights_only=True)
else:  # the same layers' keys and shapes, default-initialized, instead of a download
    state = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
pi.load_state_dict_from_url = lambda *a, **k: state
model = pi.InceptionV3([3]).eval()
images = np.load(args["images"])
bs = args["batch_size"]

def run(batch):
    with torch.no_grad():
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
        return model(x)[0].squeeze(3).squeeze(2).numpy()

first = run(images[:bs])
out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "seconds": []}
for _ in range(args["rounds"]):
    t = time.perf_counter()
    for i in range(0, len(images), bs):
        run(images[i:i + bs])
    out["seconds"].append(time.perf_counter() - t)
    print(json.dumps({"round_done": True}), flush=True)
    sys.stdin.readline()  # the parent times its own round in between
np.save(args["features"], first)
print(json.dumps(out), flush=True)
"""


def parse_size(text):
    h, _, w = text.lower().partition("x")
    try:
        size = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 256x256") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: sides must be >= 1")
    return size


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m benchmarks.fid_features", description=__doc__)
    p.add_argument("--images", type=int, default=500, help="number of images")
    p.add_argument("--size", type=parse_size, default="256x256", metavar="HxW", help="image size, height x width")
    p.add_argument("--batch-size", type=int, default=50, help="images per batch (pytorch-fid's default is 50)")
    p.add_argument("--weights", metavar="PTH",
                   help="pt_inception-2015-12-05-6726825d.pth for both networks (None: random weights)")
    p.add_argument("--torch-python", metavar="PATH",
                   help="a Python with torch and pytorch-fid: also time pytorch-fid (None: ours only)")
    p.add_argument("--rounds", type=int, default=1, help="timed runs per side, alternating")
    add_json_flag(p)
    args = p.parse_args(argv)
    for name in ("images", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.weights and not os.path.isfile(args.weights):
        p.error(f"--weights {args.weights}: no such file")
    if args.torch_python and not os.path.isfile(args.torch_python):
        p.error(f"--torch-python {args.torch_python}: no such file")
    return args


def make_images(n, size, seed=0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


class TorchChild:
    """pytorch-fid in a child process that times one round whenever told to go on."""

    def __init__(self, python, images_npy, features_npy, args):
        cfg = {"weights": os.path.abspath(args.weights) if args.weights else None, "images": images_npy,
               "features": features_npy, "batch_size": args.batch_size, "rounds": args.rounds}
        self.p = subprocess.Popen([python, "-c", TORCH_CHILD, json.dumps(cfg)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=os.path.dirname(images_npy))

    def _line(self):
        line = self.p.stdout.readline()
        if not line:
            err = [x for x in self.p.stderr.read().strip().splitlines() if x.strip()]
            raise RuntimeError(f"pytorch-fid child failed: {err[-1] if err else f'exit code {self.p.wait()}'}")
        return json.loads(line)

    def wait_round(self):
        self._line()

    def go_on(self):
        self.p.stdin.write("\n")
        self.p.stdin.flush()

    def result(self):
        out = self._line()
        self.p.wait()
        return out

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def bench(args):
    import numpy as np
    import tensorflow as tf

    from clade_tf import metrics

    images = make_images(args.images, args.size)
    bs = args.batch_size
    model = metrics.fid_inception(args.weights)
    ours_first = metrics.extract_features(model, images[:bs], batch_size=bs)  # traces
    result = {"machine": machine(), "images": args.images, "size": list(args.size), "batch_size": bs,
              "weights": args.weights or "random (no --weights): the speed is real, the features mean nothing",
              "tensorflow": tf.__version__, "rows": []}
    ours = []
    child = None
    with tempfile.TemporaryDirectory(prefix="fid_bench_") as tmp:
        if args.torch_python:
            np.save(os.path.join(tmp, "images.npy"), images)
            child = TorchChild(args.torch_python, os.path.join(tmp, "images.npy"),
                               os.path.join(tmp, "features.npy"), args)
        try:
            for _ in range(args.rounds):
                if child:
                    child.wait_round()  # its round ran while we waited: the two never overlap
                t = time.perf_counter()
                metrics.extract_features(model, images, batch_size=bs)
                ours.append(time.perf_counter() - t)
                if child:
                    child.go_on()
            theirs = child.result() if child else None
        finally:
            if child:
                child.kill()
        result["rows"].append(_row("clade_tf.metrics (TensorFlow, BatchNorm folded)", ours, args.images,
                                   threads=tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()))
        if theirs:
            result["rows"].append(_row(f"pytorch-fid (torch {theirs['torch']})", theirs["seconds"], args.images,
                                       threads=theirs["threads"]))
            if args.weights:
                ref = np.load(os.path.join(tmp, "features.npy")).astype(np.float64)
                result["features_rel_l2"] = float(np.linalg.norm(ours_first - ref) / np.linalg.norm(ref))
    if len(result["rows"]) == 2:
        result["ours_over_pytorch_fid"] = result["rows"][0]["images_per_s"] / result["rows"][1]["images_per_s"]
    return result


def _row(name, seconds, n, threads):
    med = statistics.median(seconds)
    return {"name": name, "seconds": [round(s, 2) for s in seconds], "median_s": med,
            "images_per_s": n / med, "threads": threads}


def format_table(result):
    h, w = result["size"]
    lines = [(f"FID features: {result['images']} images at {h}x{w}, batch {result['batch_size']} "
              f"({result['machine']}); weights: {result['weights']}"),
             f"{'network':<52} {'images/s':>9} {'median s':>9} {'threads':>8}  rounds (s)"]
    for r in result["rows"]:
        lines.append(f"{r['name']:<52} {r['images_per_s']:>9.2f} {r['median_s']:>9.1f} {r['threads']:>8}  "
                     f"{', '.join(f'{s:.1f}' for s in r['seconds'])}")
    if "ours_over_pytorch_fid" in result:
        lines.append(f"ours / pytorch-fid: {result['ours_over_pytorch_fid']:.2f}x")
    if "features_rel_l2" in result:
        lines.append(f"features of the first batch, ours vs pytorch-fid: relative L2 {result['features_rel_l2']:.2e}")
    return "\n".join(lines)


def main(argv=None):
    return run_benchmark(argv, parse_args, bench, format_table)


if __name__ == "__main__":
    sys.exit(main())
