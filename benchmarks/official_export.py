r"""The official PyTorch CLADE / SPADE generator exported to ONNX, for `benchmarks.latency --official`.

    PYTHON_WITH_TORCH -m benchmarks.official_export --official DIR --labels FILE.npz --out DIR \
        -- OPTIONS...

Runs under a Python that has torch, torchvision (the official networks import it) and
onnx; it never imports TensorFlow or `clade_tf`. DIR is a local copy of the official
code (github.com/tzt101/CLADE), which this project does not ship; OPTIONS are its
training options, derived by the parent from the same configuration as our model
(`benchmarks.train_step.official_options`).

Builds the official generator (its own initialization, seed 0), sets its BatchNorm
statistics from one training-mode pass on the label map of FILE.npz (a random network
with the initial statistics runs unnormalized), and writes to --out:

- `net_G.pth`: its state dict, which the parent imports into our generator with
  `clade_tf.torchio.convert` (the same weights in both);
- `official.onnx`: `torch.onnx.export` of the generator in eval mode, opset 17, the
  official way to deploy it. Its inputs are the one-hot semantic map (NCHW float, as
  the official `preprocess_input` makes it outside the network) and, for CLADE-ICPE,
  the positional map (NCHW); they are named `label` and `dist` and the output `image`
  so that the project's runner (`clade_tf.export.load_runner`) times it like ours;
- `official_inputs.npz`: those inputs for the label map of FILE.npz.
"""

import argparse
import os
import sys

import numpy as np


class _Deployed:
    """The generator's forward as a module with positional inputs (what torch.onnx traces)."""

    @staticmethod
    def wrap(net_g, with_dist):
        import torch

        class Deployed(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net_g = net_g

            def forward(self, label, dist=None):
                return self.net_g(label, input_dist=dist) if with_dist else self.net_g(label)

        return Deployed()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.official_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="local copy of github.com/tzt101/CLADE")
    p.add_argument("--labels", required=True, help=".npz with `label` [1,H,W] int32 (and `dist` [1,H,W,2])")
    p.add_argument("--out", required=True, help="folder to write net_G.pth, official.onnx, official_inputs.npz")
    p.add_argument("options", nargs=argparse.REMAINDER, help="official options, after --")
    args = p.parse_args(argv)
    options = args.options[1:] if args.options[:1] == ["--"] else args.options
    answers, sys.stdout = sys.stdout, sys.stderr  # the official code prints its options
    import torch

    torch.manual_seed(0)
    sys.path.insert(0, os.path.abspath(args.official))
    from models import networks
    from options.train_options import TrainOptions

    os.makedirs(args.out, exist_ok=True)
    sys.argv = ["train.py", *options, "--checkpoints_dir", args.out]
    opt = TrainOptions().parse()
    net_g = networks.define_G(opt)
    arrays = np.load(args.labels)
    label = torch.from_numpy(arrays["label"].astype(np.int64))[:, None]
    nc = opt.label_nc + (1 if opt.contain_dontcare_label else 0)
    seg = torch.zeros(label.shape[0], nc, *label.shape[2:]).scatter_(1, label, 1.0)
    inputs = {"label": seg}
    if opt.add_dist:
        inputs["dist"] = torch.from_numpy(np.ascontiguousarray(arrays["dist"].transpose(0, 3, 1, 2)))
    bns = [m for m in net_g.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = 1.0  # the running statistics become this pass's
    with torch.no_grad():
        net_g.train()
        net_g(seg, input_dist=inputs.get("dist"))
    net_g.eval()
    torch.save(net_g.state_dict(), os.path.join(args.out, "net_G.pth"))
    deployed = _Deployed.wrap(net_g, "dist" in inputs)
    torch.onnx.export(deployed, tuple(inputs.values()), os.path.join(args.out, "official.onnx"),
                      input_names=list(inputs), output_names=["image"], opset_version=17, dynamo=False)
    np.savez(os.path.join(args.out, "official_inputs.npz"), **{k: v.numpy() for k, v in inputs.items()})
    print("ok", file=answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
