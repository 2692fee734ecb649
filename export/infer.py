"""Run an exported generator on label PNGs.

    python -m export.infer --model exports/run --labels label.png --out image.png
    python -m export.infer --model exports/run/model.onnx --labels labels/ --instances insts/ --out images/
    python -m export.infer --model exports/run --labels label.png --instances auto --out image.png

`--model` is an export directory of `python -m export` (its fp32 model is used:
model_fp32.tflite, else model.onnx, else saved_model/), or one SavedModel directory,
`.tflite` or `.onnx` file of it. The export's `report.json` gives the size, class count
and don't-care class; a model file copied out of its export runs too (its inputs and size
are read from the model, class ids are not checked; a CLADE-ICPE one needs `--preset`, the
dataset whose don't-care class its positional maps leave out).

A label PNG holds class ids (a single-channel PNG) or, as the web page accepts, the
colours of the preset's palette (`--preset`, else the preset that matches the model); a
map of another size is resized (nearest) to the model's, with a notice. `--instances auto`
makes instance ids from the 8-connected regions of equal class, as the web page does.
CLADE-ICPE maps are computed from the labels; VAE models get a random z (`--seed`). The
model is loaded once for a folder.
"""

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

AUTO = "auto"
# 8-connectivity: the web page's and CLADE-ICPE's connected components (clade_tf.data.icpe)
_EIGHT = np.ones((3, 3), dtype=bool)


class InferError(Exception):
    pass


def notice(text):
    print(f"notice: {text}", file=sys.stderr)


class Contract:
    """What the caller must feed the model: from the export's report, else read from the model."""

    def __init__(self, inputs, height, width, num_classes=None, dontcare_class=None, z_dim=None, generator=None):
        self.inputs, self.height, self.width = list(inputs), height, width
        self.num_classes, self.dontcare_class, self.z_dim = num_classes, dontcare_class, z_dim
        self.generator = generator  # the report's generator dict (None without a report)

    @classmethod
    def of_export(cls, export):
        return cls(export.inputs, export.height, export.width, export.num_classes, export.dontcare_class,
                   export.z_dim, export.generator)

    @classmethod
    def of_runner(cls, model, runner, preset=None):
        """From the model file alone (copied out of its export: no report.json beside it); the
        don't-care class, which CLADE-ICPE needs, from `preset` (a `Preset`)."""
        shapes = runner.input_shapes
        label = shapes.get("label")
        if label is None or len(label) != 3 or None in label[1:]:
            raise InferError(f"--model {model}: no report.json beside it and no label input of a fixed [N, H, W] "
                             "shape in the model; name the export directory of python -m export")
        if "dist" in runner.input_names and preset is None:
            raise InferError(f"--model {model}: a CLADE-ICPE model needs the don't-care class of its positional "
                             "maps: copy the export's report.json beside the model, name the export directory, or "
                             "pass --preset NAME (the dataset it was trained on)")
        z = shapes.get("z")
        dontcare = preset.data_config().dontcare_class if preset is not None else None
        return cls(runner.input_names, label[1], label[2], dontcare_class=dontcare, z_dim=z[-1] if z else None)


def resolve_model(model):
    """`(model file or SavedModel dir, ExportDir or None)` for `--model`."""
    from clade_tf.export.exportdir import ExportDirError, find_model

    try:
        return find_model(model)
    except ExportDirError as e:
        raise InferError(str(e)) from None


def class_colours(preset, generator, num_classes):
    """The palette the web page paints with: `preset`'s, else that of the preset matching the model."""
    from clade_tf import viz
    from clade_tf.export.web import guess_preset

    if preset is None and generator is not None:
        preset = guess_preset(generator)
    return viz.palette(preset or "custom", num_classes)


def resize_nearest(arr, height, width):
    """Nearest-neighbour resize, sampling as the web page does (floor(y * h / H))."""
    rows = np.arange(height) * arr.shape[0] // height
    cols = np.arange(width) * arr.shape[1] // width
    return arr[rows][:, cols]


def open_png(path, what):
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file; all are one message
        raise InferError(f"{path}: unreadable {what} ({e})") from None
    if img.mode == "P":  # a palette PNG: its pixels' colours, as a browser decodes it
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    return np.asarray(img)


def _rgb_key(rgb):
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]


def colour_ids(path, rgb, num_classes, colours):
    """Class ids of an RGB label map: grey pixels are ids (as the page reads), else palette colours."""
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all())
    if grey and (num_classes is None or rgb[..., 0].max() < num_classes):
        return rgb[..., 0].astype(np.int64)
    if colours is None:
        raise InferError(f"{path}: a colour label map; without the export's report.json the palette is unknown: "
                         "pass --preset NAME (its palette) or a single-channel PNG of class ids")
    table = _rgb_key(np.asarray(colours))
    order = np.argsort(table, kind="stable")
    flat = _rgb_key(rgb)
    pos = np.clip(np.searchsorted(table[order], flat), 0, len(table) - 1)
    found = table[order][pos] == flat
    if not found.all():
        y, x = (int(v[0]) for v in np.nonzero(~found))
        r, g, b = (int(v) for v in rgb[y, x, :3])
        what = (f"class {r}, the model knows 0..{num_classes - 1}" if grey
                else f"colour ({r}, {g}, {b}), neither a class id nor a colour of the palette")
        raise InferError(f"{path}: pixel ({x}, {y}) is {what}")
    return order[pos]


def read_label(path, contract, colours, what="label map"):
    """Class ids `[H, W]` int32 of a label PNG (ids or palette colours), resized to the model's size."""
    arr = open_png(path, what)
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = colour_ids(path, arr[..., :3], contract.num_classes, colours)
    if arr.ndim != 2:
        raise InferError(f"{path}: {what} must be a PNG of class ids or palette colours, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    n = contract.num_classes
    if n is not None and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise InferError(f"{path}: class {bad} is not known to the model (classes 0..{n - 1})")
    return fit(path, arr, contract, what).astype(np.int32)


def read_instances(path, contract):
    """Instance ids `[H, W]` int32: a single-channel PNG, or a colour one (each colour an instance)."""
    arr = open_png(path, "instance map")
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = _rgb_key(arr)
        arr = np.unique(arr, return_inverse=True)[1].reshape(arr.shape)  # only equality matters: edges
    elif arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InferError(f"{path}: instance map must be a PNG of instance ids, got shape {arr.shape}")
    return fit(path, arr.astype(np.int64), contract, "instance map").astype(np.int32)


def fit(path, arr, contract, what):
    h, w = contract.height, contract.width
    if arr.shape != (h, w):
        notice(f"{path}: {what} {arr.shape[1]}x{arr.shape[0]} resized (nearest) to the model's {w}x{h}")
        arr = resize_nearest(arr, h, w)
    return arr


def instance_ids(label):
    """Instance ids of the 8-connected regions of equal class: 1.. in raster order of each
    region's first pixel, the web page's numbering (app.js `components`)."""
    from scipy import ndimage

    comp = np.zeros(label.shape, np.int64)
    n = 0
    for cls in np.unique(label):
        lab, k = ndimage.label(label == cls, structure=_EIGHT)
        comp[lab > 0] = lab[lab > 0] + n
        n += k
    ids, first = np.unique(comp.ravel(), return_index=True)  # each region's first pixel
    rank = np.zeros(n + 1, np.int64)
    rank[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1)
    return rank[comp].astype(np.int32)


def list_pngs(path, flag):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(".png"))
        if not files:
            raise InferError(f"{flag} {path}: no .png files")
        return files
    if not os.path.isfile(path):
        raise InferError(f"{flag} {path} not found")
    return [path]


def check_out(out, many):
    """Before the model is loaded: `--out` must be a writable folder (several inputs; created
    if missing) or a PNG path in an existing, writable folder (one input)."""
    from clade_tf.outdir import OutputError, check_writable

    try:
        if many:
            check_writable(out)
            return
        if os.path.isdir(out):
            raise InferError(f"--out {out} is a folder; one label map gives one PNG: name a file")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.exists(parent):  # refused rather than created: a typo would scatter folders
            raise InferError(f"--out {out}: the folder {parent} does not exist; create it or name another file")
        if not os.path.isdir(parent):
            raise InferError(f"--out {out}: {parent} is a file, not a folder")
        check_writable(parent, flag=f"--out {out}: the folder")
    except OutputError as e:
        raise InferError(str(e)) from None


def run(args):
    from clade_tf import viz
    from clade_tf.data.icpe import icpe_distance_map
    from clade_tf.export.runtime import load_runner
    from clade_tf.presets import PRESETS

    if args.preset is not None and args.preset not in PRESETS:
        raise InferError(f"--preset {args.preset}: expected one of {', '.join(sorted(PRESETS))}")
    model, export = resolve_model(args.model)
    labels = list_pngs(args.labels, "--labels")
    auto = args.instances == AUTO
    insts = None
    if args.instances and not auto:
        insts = list_pngs(args.instances, "--instances")
        if len(insts) != len(labels):
            raise InferError(f"{len(labels)} label maps but {len(insts)} instance maps")
    many = len(labels) > 1 or os.path.isdir(args.labels)
    check_out(args.out, many)
    if export is not None and "instance" in export.inputs and not args.instances:
        raise InferError(f"this model uses instance edges: pass --instances (PNG, folder, or {AUTO})")
    try:
        runner = load_runner(model)
    except ValueError as e:
        raise InferError(str(e)) from None
    if export is not None:
        contract = Contract.of_export(export)
    else:
        contract = Contract.of_runner(model, runner, PRESETS.get(args.preset))
        notice(f"{model}: no report.json beside it: inputs and size ({contract.width}x{contract.height}) read "
               "from the model, class ids not checked (copy the export's report.json beside it to check them)")
        if "instance" in contract.inputs and not args.instances:
            raise InferError(f"this model uses instance edges: pass --instances (PNG, folder, or {AUTO})")
    if args.instances and "instance" not in contract.inputs:
        notice("the model has no instance input; --instances is not used")
    num_classes = contract.num_classes
    if num_classes is None and args.preset is not None:
        num_classes = PRESETS[args.preset].num_classes
    colours = class_colours(args.preset, contract.generator, num_classes) if num_classes else None
    if many:
        os.makedirs(args.out, exist_ok=True)
    print(f"model: {model}")
    rng = np.random.default_rng(args.seed)
    for i, lp in enumerate(labels):
        lab = read_label(lp, contract, colours)
        x = {"label": lab[None]}
        if "instance" in contract.inputs:
            x["instance"] = (instance_ids(lab) if auto else read_instances(insts[i], contract))[None]
        if "dist" in contract.inputs:
            # as training computed it: the don't-care class has no position
            x["dist"] = icpe_distance_map(lab, contract.dontcare_class)[None]
        if "z" in contract.inputs:
            x["z"] = rng.standard_normal((1, contract.z_dim)).astype(np.float32)
        batch = runner.batch or 1  # a model exported with --batch B runs B copies; the first is kept
        img = runner({k: np.repeat(x[k], batch, axis=0) for k in contract.inputs})[0]
        dst = os.path.join(args.out, os.path.basename(lp)) if many else args.out
        viz.save_png(dst, viz.to_uint8(img))
        print(f"{lp} -> {dst}")


def main(argv=None):
    from clade_tf.cli import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    from clade_tf.cli import ArgumentParser, exit_code

    p = ArgumentParser(prog="python -m export.infer", description=__doc__)
    p.add_argument("--model", required=True,
                   help="export directory of python -m export (its fp32 model), or a SavedModel dir / .tflite / "
                        ".onnx of one")
    p.add_argument("--labels", required=True, help="label PNG or folder of them (class ids or palette colours)")
    p.add_argument("--instances",
                   help=f"instance-id PNG or folder (models with instance edges), or {AUTO}: the 8-connected "
                        "regions of equal class")
    p.add_argument("--out", required=True, help="output PNG (one input, in an existing folder) or folder")
    p.add_argument("--preset", metavar="NAME",
                   help="palette of colour label maps (default: the preset matching the model)")
    p.add_argument("--seed", type=int, default=0, help="seed of z for VAE models")
    args = p.parse_args(argv)
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        return exit_code(e, usage=(InferError,), where=args.out)  # an OSError: e.g. the disk filled up
    return 0


if __name__ == "__main__":
    sys.exit(main())
