"""`python -m export`: export a trained (or imported) generator to edge formats, verified.

    python -m export --run runs/synthetic-clade --out exports/synthetic-clade \\
        [--formats saved_model,tflite-fp32,tflite-fp16,tflite-int8-dynamic,tflite-int8,onnx] [--batch 1] \\
        [--calibration-samples 32] [--verify-samples 8] [--explain-int8]
    python -m export --weights G.weights.h5 --preset synthetic [--norm clade] \\
        [--param-free-norm syncbatch] [--use-vae] --out exports/mine

The generator comes from a run directory (`--run`: its config.json and newest
checkpoint) or from a Keras weights file and the preset it was trained with
(`--weights` + `--preset`: the architecture `python -m train --dataset PRESET
--norm ...` builds). Full-integer int8 is calibrated on the training data (the
run's dataset; with --weights the preset's: synthetic needs no files, others
--calibration-dataroot), else on blocky random label maps, with a notice. Every
format is verified on the samples of that data that follow the calibration samples
(or on blocky random label maps). --explain-int8 also measures the int8 error of each
layer group alone (report.json's int8_layers). Each TFLite file also gets the phone
delegates' verdict (`python -m export.delegates`): the ops the GPU delegate would refuse and
XNNPACK's partitions, one line under its row and in report.json's `delegates`.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_parser():
    from clade_tf.cli import ArgumentParser
    from clade_tf.export.exporter import CALIBRATION_SAMPLES, VERIFY_SAMPLES
    from clade_tf.export.runtime import FORMATS
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m export", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (python -m train or export.from_torch)")
    src.add_argument("--weights", metavar="FILE", help="generator weights (.weights.h5) to export; needs --preset")
    p.add_argument("--out", help="export directory to write (required)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated formats")
    p.add_argument("--batch", type=int, default=1, help="static batch size of the exported graph")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES, metavar="N",
                   help="int8 calibration samples")
    p.add_argument("--verify-samples", type=int, default=VERIFY_SAMPLES, metavar="N",
                   help="samples of the training data after the calibration samples that every format is "
                        "verified on (rounded up to a multiple of --batch; blocky random label maps when "
                        "there is no data)")
    p.add_argument("--explain-int8", action="store_true",
                   help="also measure the int8 error of each layer group alone (report.json's int8_layers)")
    p.add_argument("--calibration-dataroot", metavar="DIR",
                   help="dataset folder for the int8 calibration (the preset's layout); with --run it "
                        "replaces the recorded --dataroot")
    w = p.add_argument_group("with --weights: the architecture (as python -m train builds it)")
    w.add_argument("--preset", choices=sorted(PRESETS), help="dataset preset the weights were trained with")
    w.add_argument("--norm", choices=("clade", "clade-icpe", "spade", "none"), help="norm mode (default: clade)")
    w.add_argument("--param-free-norm", choices=("syncbatch", "batch", "instance"),
                   help="parameter-free normalization (default: syncbatch)")
    w.add_argument("--use-vae", action="store_true", help="VAE-mode generator (z input)")
    w.add_argument("--label-nc", type=int, help="--preset custom: classes without don't-care")
    w.add_argument("--contain-dontcare", action="store_true", help="--preset custom: one extra don't-care class")
    w.add_argument("--use-instance", action="store_true", help="--preset custom: instance edges")
    return p


def load_generator(args):
    """`(generator, DataConfig or None, seed, calibration source name, reason if no data,
    the don't-care class)`."""
    from clade_tf.config import PROCEDURAL_DATASETS
    from clade_tf.export import ExportError
    from clade_tf.networks import Generator
    from clade_tf.presets import resolve_preset
    from clade_tf.rundir import RunDirectory, load_weights_checked

    arch = {"--preset": args.preset, "--norm": args.norm, "--param-free-norm": args.param_free_norm,
            "--use-vae": args.use_vae, "--label-nc": args.label_nc,
            "--contain-dontcare": args.contain_dontcare, "--use-instance": args.use_instance}
    if args.run:
        given = [k for k, v in arch.items() if v not in (None, False)]
        if given:
            raise ExportError(f"{', '.join(given)}: only with --weights (a run's config.json fixes "
                              "the architecture)")
        if not os.path.exists(args.run):
            raise ExportError(f"--run {args.run} not found (expected a run directory of python -m train "
                              "or python -m export.from_torch)")
        if not os.path.isdir(args.run):
            raise ExportError(f"--run {args.run} is a file, not a run directory (a weights file goes "
                              "with --weights and --preset)")
        run = RunDirectory(args.run)
        g, cfg = run.load_generator()
        data = cfg.data
        if args.calibration_dataroot:
            data = dataclasses.replace(data, dataroot=args.calibration_dataroot)
        name = f"{data.dataset} data" if run.is_imported() else "run data"
        return g, data, cfg.seed, name, "", cfg.data.dontcare_class
    if not args.preset:
        raise ExportError("--weights needs --preset NAME (the preset the weights were trained with)")
    norm, pfn = args.norm or "clade", args.param_free_norm or "syncbatch"
    preset = resolve_preset(args.preset, args.label_nc, args.contain_dontcare, args.use_instance)
    cfg = preset.run_config(norm, dataroot=args.calibration_dataroot, use_vae=args.use_vae, param_free_norm=pfn)
    if not os.path.isfile(args.weights):
        raise ExportError(f"weights file not found: {args.weights}")
    g = Generator(cfg.generator, name="generator")
    g.build()
    load_weights_checked(g, args.weights, f"preset {args.preset} / norm {norm} (param-free norm {pfn}"
                                          f"{', VAE' if args.use_vae else ''})")
    if args.preset not in PROCEDURAL_DATASETS and not args.calibration_dataroot:
        return g, None, 0, "", f"no --calibration-dataroot for the {args.preset} data", cfg.data.dontcare_class
    return g, cfg.data, cfg.seed, f"{args.preset} data", "", cfg.data.dontcare_class


def main(argv=None):
    from clade_tf.cli import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    args = build_parser().parse_args(argv)
    from clade_tf.cli import exit_code
    from clade_tf.config import ConfigError
    from clade_tf.export import ExportError, calibration_inputs, delegates, export, parse_formats
    from clade_tf.export.exporter import check_inputs

    try:
        if not args.out:
            raise ExportError("--out DIR is required (the export directory to write)")
        for flag in ("calibration_samples", "batch", "verify_samples"):
            if getattr(args, flag) < 1:
                raise ExportError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
        formats = parse_formats(args.formats)
        if args.explain_int8 and "tflite-int8" not in formats:
            raise ExportError("--explain-int8 needs tflite-int8 in --formats")
        g, data, seed, source_name, unavailable, dontcare = load_generator(args)
        calibration = source = check = check_source = reason = None
        int8 = "tflite-int8" in formats
        if int8:
            calibration, source, reason = calibration_inputs(g.config, args.calibration_samples, data, seed,
                                                             source_name, unavailable)
            if reason:
                print(f"notice: int8 calibration on {args.calibration_samples} blocky random label maps, not the "
                      f"training data: {reason}")
        if data is not None and (not int8 or not reason):
            n = -(-args.verify_samples // args.batch) * args.batch
            skip = args.calibration_samples if int8 else 0
            try:
                check = check_inputs(g.config, data, seed, skip, n)
                check_source = f"{source_name}, after the first {skip}" if skip else source_name
            except (ValueError, OSError) as e:
                print(f"notice: verification on blocky random label maps, not the training data: {e}")
        report = export(g, args.out, formats, batch=args.batch, force=args.force,
                        calibration=calibration, calibration_source=source, inputs=(args.run, args.weights),
                        dontcare_class=dontcare, check=check, check_source=check_source,
                        explain=args.explain_int8)
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        # e.g. the disk filled up (an OSError): the temporary export is removed, --out untouched
        return exit_code(e, usage=(ExportError, ConfigError), where=args.out)
    for name, r in report["formats"].items():
        print(f"{name:<26} rel_l2 {r['rel_l2']:.2e}  PSNR {r['psnr_db']:6.1f} dB  vs {r['reference']:<11} "
              f"saturated {r['saturated_fraction']:5.1%}  {'ok' if r['ok'] else 'FAILED'}")
        if "delegates" in r:  # TFLite files: clade_tf.export.delegates
            print(f"{'':<26} {delegates.summary(r['delegates'])}")
    if "calibration" in report:
        print(f"int8 calibration: {report['calibration']}")
    print(f"verified on: {report['verification']}")
    for r in report.get("int8_layers", []):
        print(f"  int8 in {r['group']:<12} only ({r['ops']:3d} ops): PSNR {r['psnr_db']:6.1f} dB  rel_l2 {r['rel_l2']:.2e}")
    print(f"wrote {args.out} (report.json)")
    failed = [name for name, r in report["formats"].items() if not r["ok"]]
    if failed:
        print(f"error: {', '.join(failed)} failed verification (see {args.out}/report.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
