"""Data tests: synthetic dataset, ICPE maps, every folder layout, bad samples."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from clade_tf.data import folders, pipeline, sources, synthetic
from clade_tf.data.icpe import flip_distance_map, icpe_distance_map, instance_edge_map

RNG_SEED = 3  # tests/conftest.py resets RNG to it before each test
RNG = np.random.default_rng(RNG_SEED)


# --- synthetic -------------------------------------------------------------------------

def test_synthetic_is_deterministic_by_seed_and_index():
    a = synthetic.make_sample(0, 5, 6, 32, 48)
    b = synthetic.make_sample(0, 5, 6, 32, 48)
    c = synthetic.make_sample(1, 5, 6, 32, 48)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["label"], c["label"])
    assert a["label"].shape == (32, 48) and a["image"].shape == (32, 48, 3)
    assert a["label"].dtype == np.int32 and a["instance"].dtype == np.int32
    assert a["image"].min() >= -1 and a["image"].max() <= 1
    assert a["instance"].max() >= 3  # several shapes, each its own instance


def test_synthetic_fidelity_separates_real_from_wrong_images():
    s = [synthetic.make_sample(0, i, 6, 64, 64) for i in range(16)]
    imgs = np.stack([x["image"] for x in s])
    labs = np.stack([x["label"] for x in s])
    assert synthetic.fidelity(imgs, labs, 6) > 0.95
    assert synthetic.fidelity(np.zeros_like(imgs), labs, 6) < 0.35
    assert synthetic.fidelity(imgs[::-1], labs, 6) < 0.35  # right colours, wrong places
    # painting every region with its class colour (no texture) is fully faithful
    flat = synthetic.CLASS_COLOURS[labs] * 2 - 1
    assert synthetic.fidelity(flat, labs, 6) > 0.95


def test_synthetic_rejects_unsupported_class_count():
    with pytest.raises(ValueError, match="supports 2..8 classes, got 9"):
        synthetic.make_sample(0, 0, 9, 16, 16)


# --- ICPE / edges ----------------------------------------------------------------------

def reference_icpe(label, ignore=None):
    """Straight from the definition: loop over classes and 8-connected components."""
    h, w = label.shape
    out = np.zeros((h, w, 2), np.float32)
    for cls in np.unique(label):
        if cls == ignore:
            continue
        comps, n = ndimage.label(label == cls, structure=np.ones((3, 3)))
        for c in range(1, n + 1):
            ys, xs = np.nonzero(comps == c)
            for axis, coords in enumerate((ys, xs)):
                off = coords - coords.mean()
                out[ys, xs, axis] = off / (np.abs(off).max() + 1e-5)
    return out


def test_icpe_matches_definition():
    lab = np.zeros((20, 30), np.int32)
    lab[2:8, 3:12] = 1
    lab[12:18, 20:29] = 1  # second component of class 1
    lab[9:11, 0:30] = 2
    lab[15, 2] = 3  # single pixel: zero offset
    d = icpe_distance_map(lab)
    np.testing.assert_allclose(d, reference_icpe(lab), atol=1e-6)
    # the first rectangle: rows 2..7 -> centroid 4.5, max |offset| 2.5
    np.testing.assert_allclose(d[2, 5, 0], (2 - 4.5) / (2.5 + 1e-5), atol=1e-6)
    assert d[15, 2].tolist() == [0.0, 0.0]
    assert np.abs(d).max() <= 1.0


def test_icpe_diagonal_pixels_are_one_component_and_dontcare_ignored():
    lab = np.zeros((4, 4), np.int32)
    lab[0, 0] = lab[1, 1] = 1  # 8-connected
    d = icpe_distance_map(lab, ignore_class=0)
    assert d[0, 0, 0] < 0 < d[1, 1, 0]
    assert not d[lab == 0].any()
    rnd = RNG.integers(0, 4, (16, 16)).astype(np.int32)
    np.testing.assert_allclose(icpe_distance_map(rnd, 3), reference_icpe(rnd, 3), atol=1e-6)


def test_flip_mirrors_and_negates_x_offset():
    lab = np.zeros((10, 10), np.int32)
    lab[2:6, 1:4] = 1
    d = icpe_distance_map(lab)
    flipped = icpe_distance_map(lab[:, ::-1].copy())
    np.testing.assert_allclose(flip_distance_map(d), flipped, atol=1e-6)


def test_numpy_and_tf_edges_agree():
    from clade_tf.layers import instance_edges

    inst = RNG.integers(0, 3, (2, 9, 11)).astype(np.int32)
    tf_edges = instance_edges(inst).numpy()[..., 0]
    np_edges = np.stack([instance_edge_map(i) for i in inst]).astype(np.float32)
    np.testing.assert_array_equal(tf_edges, np_edges)


# --- folder layouts --------------------------------------------------------------------

def write_png(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def label_coloured_image(label, scale=10):
    """An image whose red channel encodes the label: lets tests check alignment."""
    img = np.zeros(label.shape + (3,), np.uint8)
    img[..., 0] = (label.astype(np.int64) * scale) % 256
    return img


def make_ade(root, n=3, size=(40, 48), split="training"):
    for i in range(n):
        lab = RNG.integers(0, 151, size).astype(np.uint8)
        tag = "train" if split == "training" else "val"
        write_png(f"{root}/annotations/{split}/ADE_{tag}_{i:08d}.png", lab)
        write_png(f"{root}/images/{split}/ADE_{tag}_{i:08d}.png", label_coloured_image(lab, 1))


def spec_for(name, label_nc=None, dontcare=None, palette=None):
    from clade_tf.presets import get_preset

    p = get_preset(name)
    data = p.data_config(label_nc=label_nc or p.label_nc,
                         contain_dontcare=p.contain_dontcare if dontcare is None else dontcare)
    return folders.LabelSpec(name, data.label_nc, data.dontcare_class, palette)


def test_ade20k_layout_and_label_shift(tmp_path):
    root = str(tmp_path / "ADEChallengeData2016")
    make_ade(root)
    make_ade(root, n=2, split="validation")
    samples, problems = folders.list_samples("ade20k", root, "train")
    assert len(samples) == 3 and not problems
    assert len(folders.list_samples("ade20k", root, "val")[0]) == 2
    assert folders.list_samples("ade20k-outdoor", root, "train")[0] == samples
    raw = np.asarray(Image.open(samples[0].label)).astype(np.int64)
    lab, _ = folders.read_label(samples[0].label, spec_for("ade20k"))
    assert (lab[raw == 0] == 150).all()  # 0 ("other") -> don't-care, the last class
    np.testing.assert_array_equal(lab[raw > 0], raw[raw > 0] - 1)


def test_resize_and_crop_keeps_image_and_label_aligned_and_flips_dist(tmp_path):
    root = str(tmp_path / "ade")
    # blocky random labels: unique crop positions, and interiors to check colours on
    lab = np.kron(RNG.integers(1, 4, (6, 6)), np.ones((10, 10), np.int64)).astype(np.uint8)
    write_png(f"{root}/annotations/training/ADE_train_1.png", lab)
    write_png(f"{root}/images/training/ADE_train_1.png", label_coloured_image(lab, 80))
    samples, _ = folders.list_samples("ade20k", root, "train")
    prep = folders.Preprocess("resize_and_crop", 40, 32, 32, flip=True)
    full = np.asarray(Image.fromarray(lab).resize((40, 40), Image.NEAREST)).astype(np.int32) - 1
    full_dist = icpe_distance_map(full, 150)
    flips = set()
    for seed in range(12):
        out = folders.load_folder_sample(samples[0], spec_for("ade20k"), prep,
                                         np.random.default_rng(seed), False, True)
        assert out["image"].shape == (32, 32, 3) and out["label"].shape == (32, 32)
        # image and label cropped/flipped together: interior colours match the labels
        red = np.rint((out["image"][..., 0] + 1) * 127.5)
        same = ndimage.minimum_filter(out["label"], 3) == ndimage.maximum_filter(out["label"], 3)
        assert (np.abs(red - (out["label"] + 1) * 80) <= 8)[same].mean() > 0.97
        # locate the crop in the resized map; the dist map is the same crop, flipped
        # with its x offset negated
        matches = [(y, x, f) for y in range(9) for x in range(9) for f in (False, True)
                   if np.array_equal(full[y:y + 32, x:x + 32][:, ::-1] if f else full[y:y + 32, x:x + 32], out["label"])]
        assert len(matches) == 1, matches
        y, x, f = matches[0]
        flips.add(f)
        d = full_dist[y:y + 32, x:x + 32]
        if f:
            d = d[:, ::-1] * np.array([1.0, -1.0], np.float32)
        np.testing.assert_allclose(out["dist"], d, atol=1e-6)
    assert flips == {True, False}


def test_cityscapes_layout_fixed_resize_and_alignment(tmp_path):
    from clade_tf.presets import get_preset

    root = str(tmp_path / "cityscapes")
    maps = {}
    for split, city in (("train", "aachen"), ("val", "lindau")):
        for i in range(2):
            base = f"{city}_{i:06d}_000019"
            # 16 x 16 blocks: nearest resizing keeps each block's id and the interiors keep their colour
            lab = np.kron(RNG.integers(0, 35, (4, 8)), np.ones((16, 16), np.int64)).astype(np.uint8)
            lab[:16, :16] = 34  # the last class: Cityscapes ids are used as they are
            ids = np.array([0, 26001, 26002])[RNG.integers(0, 3, (4, 8))]
            inst = np.kron(ids, np.ones((16, 16), np.int64)).astype(np.uint16)  # 16-bit, as Cityscapes ships them
            write_png(f"{root}/gtFine/{split}/{city}/{base}_gtFine_labelIds.png", lab)
            write_png(f"{root}/gtFine/{split}/{city}/{base}_gtFine_instanceIds.png", inst)
            write_png(f"{root}/leftImg8bit/{split}/{city}/{base}_leftImg8bit.png", label_coloured_image(lab, 7))
            maps[base] = lab, inst
    samples, problems = folders.list_samples("cityscapes", root, "train", use_instance=True)
    assert len(samples) == 2 and not problems and samples[0].instance.endswith("_instanceIds.png")
    # the preset's own preprocessing (validation split: no flip): the fixed resize to 256 x 512,
    # here 4x the 64 x 128 maps, nearest for labels and instances, so each block becomes 64 x 64
    preset = get_preset("cityscapes")
    source = sources.make_source(preset.run_config("clade", dataroot=root).data, preset.generator_config("clade"),
                                 seed=0, phase="val")
    assert len(source) == 2
    for index, sample in enumerate(source.samples):
        lab, inst = maps[os.path.basename(sample.label).split("_gtFine")[0]]
        out = source.load(index, np.random.default_rng(0))
        assert out["image"].shape == (256, 512, 3)
        np.testing.assert_array_equal(out["label"], np.kron(lab, np.ones((4, 4), np.uint8)))
        np.testing.assert_array_equal(out["instance"], np.kron(inst, np.ones((4, 4), np.uint16)))
        # image and labels aligned: away from block edges (bicubic 4x reaches 8 pixels) the red
        # channel is 7 x the label
        red = np.rint((out["image"][..., 0] + 1) * 127.5)
        inside = ndimage.minimum_filter(out["label"], 19) == ndimage.maximum_filter(out["label"], 19)
        assert inside.mean() > 0.3 and (np.abs(red - 7 * out["label"]) <= 1)[inside].all()


def test_coco_stuff_layout_and_dontcare(tmp_path):
    root = str(tmp_path / "coco")
    for pre in ("train", "val"):
        for i in range(2):
            lab = RNG.integers(0, 182, (30, 40)).astype(np.uint8)
            lab[0, :5] = 255
            write_png(f"{root}/{pre}_label/{i:012d}.png", lab)
            write_png(f"{root}/{pre}_inst/{i:012d}.png", (lab // 50).astype(np.uint8))
            Image.fromarray(label_coloured_image(lab)).save(f"{root}/{pre}_img/{i:012d}.jpg") if os.makedirs(
                f"{root}/{pre}_img", exist_ok=True) is None else None
    samples, problems = folders.list_samples("coco-stuff", root, "train", use_instance=True)
    assert len(samples) == 2 and not problems
    lab, _ = folders.read_label(samples[0].label, spec_for("coco-stuff"))
    assert (lab[0, :5] == 182).all() and lab.max() == 182


def test_custom_layout_with_pipeline(tmp_path):
    root = str(tmp_path / "custom")
    for i in range(4):
        lab = RNG.integers(0, 5, (36, 36)).astype(np.uint8)
        write_png(f"{root}/labels/img{i}.png", lab)
        write_png(f"{root}/images/img{i}.png", label_coloured_image(lab))
    samples, _ = folders.list_samples("custom", root)
    source = sources.FolderSource(samples, spec_for("custom", 5, False),
                                  folders.Preprocess("resize_and_crop", 36, 32, 32, True), False, True)
    ds = pipeline.make_dataset(source, 2, 32, 32, seed=0, use_dist=True, num_steps=3)
    batches = list(ds)
    assert len(batches) == 3
    assert batches[0]["image"].shape == (2, 32, 32, 3) and batches[0]["dist"].shape == (2, 32, 32, 2)
    # the data position is a pure function of the step: starting at step 2 gives batch 2
    again = list(pipeline.make_dataset(source, 2, 32, 32, seed=0, use_dist=True, start_step=2, num_steps=1))
    for k in batches[2]:
        np.testing.assert_array_equal(again[0][k].numpy(), batches[2][k].numpy())


# --- bad samples -----------------------------------------------------------------------

def custom_root(tmp_path, n=3, size=(20, 20), maxlab=5):
    root = str(tmp_path / "c")
    for i in range(n):
        lab = RNG.integers(0, maxlab, size).astype(np.uint8)
        write_png(f"{root}/labels/s{i}.png", lab)
        write_png(f"{root}/images/s{i}.png", label_coloured_image(lab))
    return root


def load(root, name, label_nc=5, palette=None, dontcare=False):
    samples, _ = folders.list_samples("custom", root)
    s = next(x for x in samples if os.path.basename(x.image).startswith(name))
    return folders.load_folder_sample(s, spec_for("custom", label_nc, dontcare, palette),
                                      folders.Preprocess("resize_and_crop", 20, 16, 16, False),
                                      np.random.default_rng(0), False, False)


def test_out_of_range_label_error_names_value_file_classes_and_flag(tmp_path):
    root = custom_root(tmp_path)
    lab = np.zeros((20, 20), np.uint8)
    lab[3, 4] = 17
    write_png(f"{root}/labels/s1.png", lab)
    with pytest.raises(folders.BadSample) as e:
        load(root, "s1")
    msg = str(e.value)
    assert "s1.png" in msg and "label value 17" in msg and "5 classes" in msg and "--label-nc" in msg
    assert "\n" not in msg


def test_out_of_range_on_a_preset_points_at_the_dataset(tmp_path):
    spec = spec_for("cityscapes")
    with pytest.raises(folders.BadSample, match=r"label value 40 is outside the 35 classes .*--dataset"):
        folders.remap_label(np.full((2, 2), 40), spec, "x.png")


def test_unreadable_image_and_size_mismatch(tmp_path):
    root = custom_root(tmp_path)
    with open(f"{root}/images/s0.png", "wb") as f:
        f.write(b"not a png")
    with pytest.raises(folders.BadSample, match=r"s0.png: unreadable image"):
        load(root, "s0")
    write_png(f"{root}/images/s2.png", np.zeros((10, 20, 3), np.uint8))
    with pytest.raises(folders.BadSample, match=r"s2.png: image is 20x10 but its label map .*s2.png is 20x20"):
        load(root, "s2")


def test_missing_pair_is_reported(tmp_path):
    root = custom_root(tmp_path)
    os.remove(f"{root}/labels/s1.png")
    samples, problems = folders.list_samples("custom", root)
    assert len(samples) == 2
    assert problems == [f"image {root}/images/s1.png has no label map"]


def test_rgb_masks_need_a_palette(tmp_path):
    root = custom_root(tmp_path)
    mask = np.zeros((20, 20, 3), np.uint8)
    mask[:10] = (255, 0, 0)
    mask[10:] = (0, 0, 255)
    write_png(f"{root}/labels/s0.png", mask)
    with pytest.raises(folders.BadSample, match=r"s0.png: label map is an RGB colour mask.*--palette FILE"):
        load(root, "s0")
    pal_path = tmp_path / "pal.json"
    pal_path.write_text(json.dumps({"255,0,0": 1, "0,0,255": 3}))
    out = load(root, "s0", palette=folders.load_palette(str(pal_path)))
    assert set(np.unique(out["label"])) == {1, 3}
    (tmp_path / "pal.txt").write_text("255 0 0 1\n")
    with pytest.raises(folders.BadSample, match=r"colour \(0, 0, 255\) at .* is not in the palette"):
        load(root, "s0", palette=folders.load_palette(str(tmp_path / "pal.txt")))
    (tmp_path / "bad.txt").write_text("255 0 1\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 1 '255 0 1': expected four numbers r g b class"):
        folders.load_palette(str(tmp_path / "bad.txt"))


def test_skip_bad_samples_reports_counts_and_substitutes_deterministically(tmp_path, capsys):
    root = custom_root(tmp_path, n=4)
    with open(f"{root}/images/s2.png", "wb") as f:
        f.write(b"junk")
    samples, _ = folders.list_samples("custom", root)
    prep = folders.Preprocess("resize_and_crop", 20, 16, 16, False)
    strict = sources.FolderSource(samples, spec_for("custom", 5, False), prep, False, False)
    with pytest.raises(Exception, match="s2.png: unreadable image"):
        list(pipeline.make_dataset(strict, 4, 16, 16, num_steps=1))
    lenient = sources.FolderSource(samples, spec_for("custom", 5, False), prep, False, False, skip_bad=True)
    seed, n = 5, 4
    a = list(pipeline.make_dataset(lenient, 2, 16, 16, seed=seed, num_steps=6))  # 3 epochs
    assert lenient.bad_count == 1
    assert "skipping bad sample (1 so far)" in capsys.readouterr().err
    # the bad sample's place goes to the next sample of the epoch's order (docs/training.md), with that
    # sample's own augmentation (its random crop here)
    bad = [os.path.basename(x.image) for x in samples].index("s2.png")
    want, substitutes = [], []
    for epoch in range(3):
        order = pipeline.epoch_order(n, seed, epoch)
        for k in range(n):
            index = int(order[(k + 1) % n] if order[k] == bad else order[k])
            if order[k] == bad:
                substitutes.append(index)
            want.append(strict.load(index, pipeline.sample_rng(seed, epoch, index)))
    assert any(i != (bad + 1) % n for i in substitutes)  # the order's next, not the next file
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([x[key].numpy() for x in a]), np.stack([w[key] for w in want]))
    # a run resumed at any step sees the same batches, substitutes included
    for step in range(1, 6):
        resumed = next(iter(pipeline.make_dataset(lenient, 2, 16, 16, seed=seed, start_step=step, num_steps=1)))
        for key in ("image", "label"):
            np.testing.assert_array_equal(resumed[key].numpy(), a[step][key].numpy())


def test_scan_label_classes(tmp_path):
    root = custom_root(tmp_path, maxlab=3)
    lab = np.zeros((20, 20), np.uint8)
    lab[0, 0] = 9
    write_png(f"{root}/labels/s0.png", lab)
    samples, _ = folders.list_samples("custom", root)
    classes = folders.scan_label_classes(samples)
    assert 9 in classes and set(classes) <= {0, 1, 2, 9}


def test_the_package_names_are_their_owners():
    """Each public name of `clade_tf.data` is the object of the one module that defines it."""
    import importlib

    from clade_tf import data

    assert sorted(data.__all__) == sorted(data._EXPORTS) and set(data.__all__) <= set(dir(data))
    for name, module in data._EXPORTS.items():
        value = getattr(data, name)
        assert value is getattr(importlib.import_module(module), name)
        assert value.__module__ == module, f"{name} is defined in {value.__module__}, listed under {module}"
    assert data.CacheSource is sources.CacheSource and data.make_dataset is pipeline.make_dataset
    with pytest.raises(AttributeError, match="'clade_tf.data' has no attribute 'SyntheticDataset'"):
        data.SyntheticDataset  # noqa: B018


def test_the_numpy_side_imports_without_tensorflow():
    """The procedural datasets, the folder layouts and the prepared cache's writer need no
    TensorFlow (`python -m train.prepare` and the browser demo's examples use them)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import clade_tf.data, clade_tf.data.cache, clade_tf.data.folders, clade_tf.data.icpe\n"
            "import clade_tf.data.report, clade_tf.data.scenes, clade_tf.data.synthetic\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_report_once_prints_each_message_once_per_key(capsys):
    from clade_tf.data import report

    report.forget_reported()
    assert report.report_once("skipping: a.png") and not report.report_once("skipping: a.png")
    assert report.report_once("skipping bad sample (1 so far): b.png", key="b.png")
    assert not report.report_once("skipping bad sample (2 so far): b.png", key="b.png")
    report.forget_reported()
    assert report.report_once("skipping: a.png")
    assert capsys.readouterr().err.splitlines() == [
        "skipping: a.png", "skipping bad sample (1 so far): b.png", "skipping: a.png"]
