"""Real dataset layouts (ADE20K, Cityscapes, COCO-Stuff, custom folders) and the
official preprocessing, on numpy/PIL.

Every problem with a sample raises `BadSample` naming the file and what was
expected; the stream (`clade_tf.data.pipeline`) either stops on it or, when asked to
skip bad samples, reports and counts it (`sources.FolderSource`).
"""

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from clade_tf.data.icpe import flip_distance_map, icpe_distance_map
from clade_tf.data.report import report_once

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class BadSample(ValueError):
    """A sample that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Sample:
    image: str
    label: str
    instance: str | None = None


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _list(directory, exts=IMAGE_EXTS, suffix=""):
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"dataset folder not found: {directory}")
    out = []
    for root, _, files in os.walk(directory):
        for f in files:
            if f.lower().endswith(exts) and f[: -len(os.path.splitext(f)[1])].endswith(suffix):
                out.append(os.path.join(root, f))
    return sorted(out)


def _pair(images, labels, instances=None, image_key=_stem, label_key=_stem, inst_key=_stem):
    """Pairs files by key; a file without its partner is a `BadSample`-worthy error."""
    lab_by = {label_key(p): p for p in labels}
    inst_by = {inst_key(p): p for p in instances} if instances is not None else None
    img_keys = {image_key(p) for p in images}
    missing = []
    for p in images:
        k = image_key(p)
        if k not in lab_by:
            missing.append(f"image {p} has no label map")
        if inst_by is not None and k not in inst_by:
            missing.append(f"image {p} has no instance map")
    for k, p in lab_by.items():
        if k not in img_keys:
            missing.append(f"label map {p} has no image")
    samples = [
        Sample(p, lab_by[image_key(p)], inst_by[image_key(p)] if inst_by is not None else None)
        for p in images
        if image_key(p) in lab_by and (inst_by is None or image_key(p) in inst_by)
    ]
    return samples, missing


def list_samples(dataset, dataroot, phase="train", use_instance=False):
    """Lists `(image, label[, instance])` triples in the official layout of `dataset`.

    Returns `(samples, problems)`: `problems` lists files without their partner.
    """
    if not os.path.isdir(dataroot):
        raise FileNotFoundError(f"--dataroot {dataroot} does not exist")
    train = phase == "train"
    if dataset in ("ade20k", "ade20k-outdoor"):
        # As the official loaders: any file under an `images` / `annotations` folder
        # whose name carries `_train_` / `_val_` (ADE_train_00000001.jpg ...).
        tag = "_train_" if train else "_val_"

        def pick(files, folder):
            return [p for p in files if tag in os.path.basename(p)
                    and folder in os.path.relpath(p, dataroot).split(os.sep)]

        images = pick(_list(dataroot), "images")
        labels = pick(_list(dataroot, (".png",)), "annotations")
        return _pair(images, labels)
    if dataset == "cityscapes":
        sub = "train" if train else "val"
        images = _list(os.path.join(dataroot, "leftImg8bit", sub), (".png",), "_leftImg8bit")
        labels = _list(os.path.join(dataroot, "gtFine", sub), (".png",), "_gtFine_labelIds")
        insts = (_list(os.path.join(dataroot, "gtFine", sub), (".png",), "_gtFine_instanceIds")
                 if use_instance else None)

        def key(suffix):
            return lambda p: _stem(p)[: -len(suffix)]

        return _pair(images, labels, insts, key("_leftImg8bit"), key("_gtFine_labelIds"),
                     key("_gtFine_instanceIds"))
    if dataset == "coco-stuff":
        pre = "train" if train else "val"
        images = _list(os.path.join(dataroot, f"{pre}_img"))
        labels = _list(os.path.join(dataroot, f"{pre}_label"), (".png",))
        insts = _list(os.path.join(dataroot, f"{pre}_inst"), (".png",)) if use_instance else None
        return _pair(images, labels, insts)
    if dataset == "custom":
        pre = "" if train else "val_"
        images = _list(os.path.join(dataroot, f"{pre}images"))
        labels = _list(os.path.join(dataroot, f"{pre}labels"), (".png",))
        insts = _list(os.path.join(dataroot, f"{pre}instances"), (".png",)) if use_instance else None
        return _pair(images, labels, insts)
    raise ValueError(f"no folder layout for dataset {dataset!r}")


def _palette_row(path, where, row):
    """`[r, g, b, class]` as ints, or a `ValueError` naming the file and the entry."""
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise ValueError(f"{path}: {where}: expected four numbers r g b class")
    try:
        return [int(t) for t in row]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {where}: expected four integers r g b class") from None


def load_palette(path):
    """Reads a colour -> class palette: JSON `{"r,g,b": class}` / `[[r, g, b, class], ...]`,
    or text lines `r g b class`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"palette file not found: {path}")
    with open(path) as f:
        text = f.read()
    entries = []  # (where in the file, [r, g, b, class])
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        if isinstance(data, dict):
            items = [(f"key {k!r}", str(k).replace(" ", "").split(",") + [v]) for k, v in data.items()]
        elif isinstance(data, list):
            items = [(f"entry {i} {row!r}", row) for i, row in enumerate(data)]
        else:
            raise ValueError(f"{path}: expected a JSON object {{\"r,g,b\": class}} or a list of [r, g, b, class], "
                             f"got {type(data).__name__}")
        for where, row in items:
            entries.append((where, _palette_row(path, where, row)))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#")[0].strip()
            if line:
                entries.append((f"line {n}", _palette_row(path, f"line {n} {line!r}", line.replace(",", " ").split())))
    palette = {}
    for where, e in entries:
        if not all(0 <= c <= 255 for c in e[:3]) or e[3] < 0:
            raise ValueError(f"{path}: {where}: {e} is out of range, expected r, g, b in 0..255 and a class >= 0")
        palette[tuple(e[:3])] = e[3]
    if not palette:
        raise ValueError(f"{path}: palette is empty")
    return palette


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """How raw label files map to model classes.

    Attributes:
        dataset: preset name (for the remapping and messages).
        label_nc: classes without don't-care.
        dontcare_class: the class raw 255 (ADE20K: raw 0) becomes, or None; it is
            `DataConfig.dontcare_class` (the one place it is derived), handed in by the
            sources and the cache so that this numpy-only module needs no config import.
        palette: RGB colour -> class, for custom datasets with colour masks.
        label_flag: the CLI flag that fixes a class-count mismatch.
    """

    dataset: str
    label_nc: int
    dontcare_class: int | None
    palette: dict | None = None
    label_flag: str = "--label-nc"

    @property
    def contain_dontcare(self):
        return self.dontcare_class is not None

    @property
    def num_classes(self):
        return self.label_nc + (1 if self.contain_dontcare else 0)


def read_label(path, spec):
    """Reads and remaps a label PNG to model classes (int32 [H, W]), validating it."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # noqa: BLE001 (PIL raises many types; re-raised as one BadSample line)
        raise BadSample(f"{path}: unreadable label map ({e})") from None
    if img.mode in ("RGB", "RGBA"):
        if spec.palette is None:
            raise BadSample(
                f"{path}: label map is an {img.mode} colour mask, but labels must be class ids "
                f"(single-channel PNG); pass --palette FILE mapping colours to classes"
            )
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        label = np.full(code.shape, -1, dtype=np.int64)
        for (r, g, b), cls in spec.palette.items():
            label[code == ((r << 16) | (g << 8) | b)] = cls
        if (label < 0).any():
            y, x = np.argwhere(label < 0)[0]
            raise BadSample(
                f"{path}: colour {tuple(int(c) for c in rgb[y, x])} at (x={x}, y={y}) is not in "
                f"the palette"
            )
    else:
        label = np.asarray(img).astype(np.int64)
        if label.ndim != 2:
            raise BadSample(f"{path}: label map must be single-channel, got shape {label.shape}")
    return remap_label(label, spec, path), img.size


def remap_label(raw, spec, path="<array>"):
    """Official label remapping, then a range check with an actionable message."""
    label = raw.copy()
    if spec.dataset in ("ade20k", "ade20k-outdoor"):
        # ADE20K: 0 is "other"; classes 1..150 shift down by one, 0 becomes don't-care.
        label = label - 1
        label[label == -1] = spec.dontcare_class
    elif spec.contain_dontcare:
        label[label == 255] = spec.dontcare_class
    bad = (label < 0) | (label >= spec.num_classes)
    if bad.any():
        raw_bad = int(raw[bad][0]) if spec.palette is None else int(label[bad][0])
        found = np.unique(raw[bad] if spec.palette is None else label[bad])
        hint = (
            f"set {spec.label_flag} to cover it (e.g. {spec.label_flag} auto scans the dataset)"
            if spec.dataset == "custom"
            else "check --dataset matches the data (or use --dataset custom with --label-nc)"
        )
        dc = " incl. don't-care" if spec.contain_dontcare else ""
        raise BadSample(
            f"{path}: label value {raw_bad} is outside the {spec.num_classes} classes "
            f"(0..{spec.num_classes - 1}{dc}) of --dataset {spec.dataset} with label_nc="
            f"{spec.label_nc}; out-of-range values found: {found[:10].tolist()}; {hint}"
        )
    return label.astype(np.int32)


def scan_label_classes(samples, palette=None, skip_bad=False):
    """Sorted unique class values over all label files (for `--label-nc auto`); with
    `skip_bad` an unreadable label map is reported (once) and left out, as training does."""
    values = set()
    spec = LabelSpec("custom", 1 << 30, None, palette)
    for s in samples:
        try:
            label, _ = read_label(s.label, spec)
        except BadSample as e:
            if not skip_bad:
                raise
            report_once(f"skipping bad sample: {e}", key=str(e))
            continue
        values.update(np.unique(label).tolist())
    return sorted(values)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Official resizing: `resize_and_crop` (square load size, random crop) or `fixed`."""

    mode: str
    load_size: int
    crop_height: int
    crop_width: int
    flip: bool


def _resize(img, w, h, method):
    return img if img.size == (w, h) else img.resize((w, h), method)


def load_folder_sample(sample, spec, prep, rng, use_instance, use_dist):
    """Reads one sample and applies the official preprocessing.

    Returns a dict of numpy arrays: `image` float32 [H, W, 3] in [-1, 1], `label`
    int32 [H, W], and `instance` int32 / `dist` float32 [H, W, 2] when asked.
    """
    full = load_resized(sample, spec, prep, use_instance, use_dist)
    return crop_sample(full, prep, crop_params(prep, full["label"].shape, rng))


def crop_sample(full, prep, params):
    """The training crop `params = (x0, y0, flip)` of a sample's load-size arrays
    (`load_resized`'s), the image scaled to [-1, 1] float32."""
    x0, y0, flip = params

    def crop(a):
        a = a[y0:y0 + prep.crop_height, x0:x0 + prep.crop_width]
        return a[:, ::-1] if flip else a

    out = {"image": np.ascontiguousarray(crop(full["image"])).astype(np.float32) / 127.5 - 1.0,
           "label": np.ascontiguousarray(crop(full["label"]))}
    if "instance" in full:
        out["instance"] = np.ascontiguousarray(crop(full["instance"]))
    if "dist" in full:
        d = full["dist"][y0:y0 + prep.crop_height, x0:x0 + prep.crop_width]
        out["dist"] = np.ascontiguousarray(flip_distance_map(d) if flip else d)
    return out


def crop_params(prep, size_hw, rng):
    """`(x0, y0, flip)` of a sample's random crop and flip, drawn from its `rng` (the
    order of draws is part of the data position: resume and the prepared cache rely on it)."""
    x0 = int(rng.integers(0, max(0, size_hw[1] - prep.crop_width) + 1))
    y0 = int(rng.integers(0, max(0, size_hw[0] - prep.crop_height) + 1))
    flip = bool(prep.flip and rng.uniform() > 0.5)
    return x0, y0, flip


def load_resized(sample, spec, prep, use_instance, use_dist):
    """One sample read and resized as the official preprocessing does, before its random
    crop: `image` uint8 [S, S, 3], `label` int32, `instance` int32 and `dist` float32
    [S, S, 2] when asked (S: the load size; `fixed`: the crop size)."""
    label_arr, label_size = read_label(sample.label, spec)
    try:
        image = Image.open(sample.image)
        image.load()
        image = image.convert("RGB")
    except Exception as e:  # noqa: BLE001 (PIL raises many types; re-raised as one BadSample line)
        raise BadSample(f"{sample.image}: unreadable image ({e})") from None
    if image.size != label_size:
        raise BadSample(
            f"{sample.image}: image is {image.size[0]}x{image.size[1]} but its label map "
            f"{sample.label} is {label_size[0]}x{label_size[1]}"
        )
    label = Image.fromarray(label_arr)
    inst = None
    if use_instance:
        if sample.instance is None:
            raise BadSample(f"{sample.image}: instance map missing")
        try:
            inst = Image.open(sample.instance)
            inst.load()
        except Exception as e:  # noqa: BLE001 (PIL raises many types; re-raised as one BadSample line)
            raise BadSample(f"{sample.instance}: unreadable instance map ({e})") from None
        if inst.size != label_size:
            raise BadSample(f"{sample.instance}: instance map size {inst.size} != label size {label_size}")
        inst = Image.fromarray(np.asarray(inst).astype(np.int32))
    if prep.mode == "resize_and_crop":
        size = (prep.load_size, prep.load_size)
    elif prep.mode == "fixed":
        size = (prep.crop_width, prep.crop_height)
    else:
        raise ValueError(f"unknown preprocess mode {prep.mode!r}")
    image = _resize(image, *size, Image.BICUBIC)
    label = _resize(label, *size, Image.NEAREST)
    inst = _resize(inst, *size, Image.NEAREST) if inst is not None else None
    lab = np.asarray(label).astype(np.int32)
    out = {"image": np.asarray(image, dtype=np.uint8), "label": lab}
    if inst is not None:
        out["instance"] = np.asarray(inst).astype(np.int32)
    if use_dist:
        # ICPE map on the resized label (the official one is computed at full size, then
        # resized): before the crop, so components keep their real centroid.
        out["dist"] = icpe_distance_map(lab, spec.dontcare_class)
    return out
