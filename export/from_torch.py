"""Import an official CLADE / SPADE PyTorch generator checkpoint (no torch needed).

    python -m export.from_torch latest_net_G.pth --preset ade20k --out runs/ade20k-official
    python -m export.from_torch G.pth --preset custom --label-nc 3 --contain-dontcare \\
        --use-instance --image-size 32x32 --use-vae --encoder E.pth --out runs/mine

Writes a run directory like `python -m train` does (`config.json`, `generator.keras`,
`generator.weights.h5`, and `encoder.weights.h5` with `--encoder`). The norm mode,
instance edges, VAE input and width are read from the checkpoint; flags that
contradict it, or a preset with another class count, are errors.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class ImportErrorMessage(Exception):
    pass


def inspect_checkpoint(sd):
    from clade_tf.torchio.convert import inspect_generator_state_dict

    try:
        return inspect_generator_state_dict(sd)
    except ValueError as e:
        raise ImportErrorMessage(str(e)) from None


def parse_size(text):
    try:
        h, w = (int(t) for t in text.lower().split("x"))
        return h, w
    except ValueError:
        raise ImportErrorMessage(f"--image-size {text!r}: expected HxW, e.g. 256x512") from None


def build_config(args, sd):
    from clade_tf.presets import custom_preset, get_preset

    info = inspect_checkpoint(sd)
    preset = get_preset(args.preset)
    if args.preset == "custom":
        if args.label_nc is None:
            raise ImportErrorMessage("--preset custom needs --label-nc N")
        preset = custom_preset(args.label_nc, args.contain_dontcare, args.use_instance)
    elif args.label_nc is not None:
        raise ImportErrorMessage(f"--label-nc applies to --preset custom only ({args.preset} has {preset.label_nc})")
    if args.norm and args.norm != info["norm_mode"]:
        raise ImportErrorMessage(f"--norm {args.norm}, but the checkpoint is a {info['norm_mode']} generator")
    if args.use_vae and not info["use_vae"]:
        raise ImportErrorMessage("--use-vae, but the checkpoint's fc is a conv (label-map input)")
    n = preset.num_classes
    if info["norm_mode"] == "spade":
        use_instance = info["semantic_channels"] == n + 1
        ok = info["semantic_channels"] in (n, n + 1)
        found = f"{info['semantic_channels']} semantic channels"
    else:
        use_instance = info["use_instance"]
        ok = info["num_classes"] == n
        found = f"{info['num_classes']} classes"
    if not ok:
        raise ImportErrorMessage(
            f"{args.checkpoint} has {found} ({info['classes_from']}) but --preset {args.preset} expects "
            f"{n} classes; use the preset it was trained with, or --preset custom --label-nc N")
    if use_instance != preset.use_instance and args.preset != "custom":
        raise ImportErrorMessage(
            f"{args.checkpoint} {'uses' if use_instance else 'does not use'} instance edges, "
            f"--preset {args.preset} {'does' if preset.use_instance else 'does not'}")
    pfn = args.param_free_norm or ("syncbatch" if info["batch_norm"] else "instance")
    if (pfn == "instance") == info["batch_norm"]:
        raise ImportErrorMessage(
            f"--param-free-norm {pfn}, but the checkpoint's norms "
            f"{'have' if info['batch_norm'] else 'have no'} BatchNorm running statistics")
    h, w = parse_size(args.image_size) if args.image_size else (preset.image_height, preset.image_width)
    ups = args.num_upsampling_layers or ("most" if info["most"] else preset.num_upsampling_layers)
    cfg = preset.generator_config(
        info["norm_mode"], use_instance=use_instance, use_vae=info["use_vae"], ngf=info["ngf"],
        image_height=h, image_width=w, num_upsampling_layers=ups, param_free_norm=pfn)
    return preset, cfg


def run(args):
    from clade_tf import ConvEncoder, Generator
    from clade_tf.config import RunConfig
    from clade_tf.rundir import RunDirectory
    from clade_tf.torchio.convert import load_encoder, load_generator
    from clade_tf.torchio.reader import load_state_dict

    sd = load_state_dict(args.checkpoint)
    preset, cfg = build_config(args, sd)
    g = Generator(cfg, name="generator")
    load_generator(g, sd)
    enc = None
    if args.encoder:
        if not cfg.use_vae:
            raise ImportErrorMessage("--encoder given, but the generator is not a VAE-mode generator")
        esd = load_state_dict(args.encoder)
        enc = ConvEncoder(ngf=int(esd["layer1.0.weight_orig"].shape[0]) if "layer1.0.weight_orig" in esd else cfg.ngf,
                          z_dim=cfg.z_dim, input_size=256, name="encoder")
        load_encoder(enc, esd)
    source = {"checkpoint": os.path.abspath(args.checkpoint),
              "encoder": os.path.abspath(args.encoder) if args.encoder else None}
    data = preset.data_config(use_instance=preset.use_instance or cfg.use_instance)
    run_cfg = RunConfig(data=data, generator=cfg, discriminator=preset.discriminator_config())
    RunDirectory(args.out).write_imported(run_cfg, g, enc, source, args.force)
    return cfg


def main(argv=None):
    from clade_tf.cli import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    from clade_tf.cli import ArgumentParser, exit_code
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m export.from_torch", description=__doc__)
    p.add_argument("checkpoint", help="official generator checkpoint (*_net_G.pth; torch.save zip or legacy format)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--norm", choices=("clade", "clade-icpe", "spade"), help="expected norm mode (checked)")
    p.add_argument("--use-vae", action="store_true", help="expect a VAE-mode generator (checked)")
    p.add_argument("--encoder", metavar="E.pth", help="the matching *_net_E.pth for VAE models")
    p.add_argument("--label-nc", type=int, help="custom preset: classes without don't-care")
    p.add_argument("--contain-dontcare", action="store_true", help="custom preset: one extra don't-care class")
    p.add_argument("--use-instance", action="store_true", help="custom preset: instance edges")
    p.add_argument("--image-size", metavar="HxW", help="output size (default: the preset's)")
    p.add_argument("--num-upsampling-layers", choices=("normal", "more", "most"))
    p.add_argument("--param-free-norm", choices=("syncbatch", "batch", "instance"),
                   help="official norm_G 'spectralspade<THIS>3x3' (default: syncbatch if the checkpoint "
                        "has BatchNorm statistics, else instance)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    from clade_tf.config import ConfigError
    from clade_tf.torchio.reader import CheckpointError

    try:
        cfg = run(args)
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        # an OSError: e.g. the disk filled up while writing (nothing half-written is left)
        return exit_code(e, usage=(ImportErrorMessage, CheckpointError, ConfigError), where=args.out)
    print(f"imported {cfg.norm_mode} generator ({cfg.num_classes} classes, ngf {cfg.ngf}, "
          f"{cfg.image_height}x{cfg.image_width}{', VAE' if cfg.use_vae else ''}) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
