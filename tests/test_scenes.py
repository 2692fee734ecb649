"""synthetic-scenes: the dataset, its segmenter and its quality metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clade_tf import resources, viz
from clade_tf.data import scenes
from clade_tf.data.icpe import icpe_distance_map
from clade_tf.metrics import scenes as ms

SEGMENTER = resources.segmenter_weights()


def batch(seed, n, size=64):
    s = [scenes.make_sample(seed, i, size, size) for i in range(n)]
    return (np.stack([x["label"] for x in s]), np.stack([x["instance"] for x in s]),
            viz.to_uint8(np.stack([x["image"] for x in s])))


@pytest.fixture(scope="module")
def real():
    return batch(1_000_003, 96)


@pytest.fixture(scope="module")
def scorer():
    return ms.SceneScorer(ms.load_segmenter(SEGMENTER), batch(424_242, 96)[2])


def test_sample_is_a_pure_function_of_seed_and_index():
    a, b = scenes.make_sample(3, 17), scenes.make_sample(3, 17)
    for k in ("label", "instance", "image"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["label"], scenes.make_sample(3, 18)["label"])
    assert not np.array_equal(a["label"], scenes.make_sample(4, 17)["label"])
    big = scenes.make_sample(3, 17, 128, 128)
    assert big["image"].shape == (128, 128, 3) and big["image"].min() >= -1 and big["image"].max() <= 1
    with pytest.raises(ValueError, match="at least 32x32"):
        scenes.make_sample(0, 0, 16, 64)


def test_every_class_and_structure_is_present(real):
    labels, instances, images = real
    counts = np.bincount(labels.ravel(), minlength=scenes.NUM_CLASSES)
    assert (counts > 0).all(), dict(zip(scenes.CLASS_NAMES, counts))
    assert np.mean([len(np.unique(lab)) for lab in labels]) >= 7  # several objects per image
    # touching buildings: outline pixels whose other side is another building
    shared = sum(scenes.shared_boundary(lab, ins, scenes.BUILDING).sum() for lab, ins in zip(labels, instances))
    assert shared > 200
    # thin structures: poles are 2 px wide, wires 1 px tall in every column they cross
    for lab in labels:
        for x in range(64):
            runs = np.diff(np.flatnonzero(np.diff(np.r_[0, lab[:, x] == scenes.WIRE, 0])))[::2]
            assert (runs <= 2).all()  # a wire crossing another may touch it
    widths = [len(np.unique(np.nonzero((lab == scenes.POLE) & (ins == i))[1]))
              for lab, ins in zip(labels, instances) for i in np.unique(ins[lab == scenes.POLE])]
    assert len(widths) > 50 and max(widths) == 2
    # the rendering carries each structure: luminance follows its target in every image kind
    scores = ms.structure_scores(images, labels, instances)
    assert min(scores.values()) > 0.98, scores


def test_icpe_map_carries_the_in_object_shading(real):
    """CLADE-ICPE's positional map predicts the dome shading that a per-class lookup cannot."""
    labels, _, images = real
    lum, dy = [], []
    for lab, img in zip(labels, images):
        m = lab == scenes.DOME
        lum.append(img[m].mean(-1))
        dy.append(icpe_distance_map(lab)[..., 0][m])
    assert np.corrcoef(np.concatenate(lum), np.concatenate(dy))[0, 1] < -0.8


def test_source_and_preset():
    from clade_tf.data import sources
    from clade_tf.presets import get_preset

    cfg = get_preset("synthetic-scenes").run_config("clade-icpe")
    assert cfg.generator.num_classes == scenes.NUM_CLASSES and cfg.data.procedural
    train = sources.make_source(cfg.data, cfg.generator, 0)
    val = sources.make_source(cfg.data, cfg.generator, 0, phase="val")
    s = train.load(5, None)
    assert set(s) >= {"label", "instance", "image", "dist"} and s["dist"].shape == (64, 64, 2)
    assert not np.array_equal(s["label"], val.load(5, None)["label"])
    np.testing.assert_array_equal(s["label"], scenes.make_sample(0, 5)["label"])


def test_segmenter_accuracy_on_real_images(real, scorer):
    """Stated accuracy of the shipped segmenter on held-out real images (benchmarks/BENCHMARKS.md)."""
    labels, instances, images = real
    m = scorer.score(images, labels, instances)
    assert m["pixel_accuracy"] >= 0.97 and m["miou"] >= 0.85, m
    assert m["thin_iou"] >= 0.6 and m["texture_iou"] >= 0.85, m


def test_metrics_on_hand_made_generators(real, scorer):
    labels, instances, images = real
    perfect = scorer.score(images, labels, instances)
    # label-blind: real images of other label maps (realistic, but not of these labels)
    blind = scorer.score(np.roll(images, 1, axis=0), labels, instances)
    assert blind["miou"] < 0.35 * perfect["miou"] and blind["pixel_accuracy"] < 0.5 * perfect["pixel_accuracy"]
    assert abs(blind["dome_shading"]) < 0.3 and abs(blind["road_lane"]) < 0.3
    # a flat per-class painting: right classes, no structure inside them
    flat = images.astype(np.float64)
    for c in range(scenes.NUM_CLASSES):
        flat[labels == c] = images[labels == c].mean(0)
    flat = scorer.score(flat.astype(np.uint8), labels, instances)
    assert all(abs(flat[k]) < 0.05 for k in ms.STRUCTURE_SCORES), flat
    # shading the wrong way round scores below zero
    upside = images.copy()
    m = labels == scenes.DOME
    upside[m] = 255 - images[m]
    assert scorer.score(upside, labels, instances)["dome_shading"] < -0.9
    # the feature distance: real vs real is small, a grey image far
    grey = scorer.score(np.full_like(images, 128), labels, instances)
    assert perfect["seg_fd"] < 0.1 * grey["seg_fd"]


def test_scorer_refuses_mismatched_images(real, scorer):
    labels, instances, images = real
    with pytest.raises(ValueError, match="expected uint8"):
        scorer.score(images[:5], labels, instances)
    with pytest.raises(ValueError, match="expected uint8"):
        scorer.score(images.astype(np.float32), labels, instances)


def test_load_segmenter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train-segmenter"):
        ms.load_segmenter(str(tmp_path / "missing.weights.h5"))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.weights.h5: not synthetic-scenes segmenter weights"):
        ms.load_segmenter(str(bad))


def test_quality_cli_errors(capsys):
    from benchmarks import quality

    for argv, msg in ((["--modes", "clade,bogus"], "--modes bogus"), (["--steps", "1"], "--steps 1"),
                      (["--segmenter", "/nonexistent.h5"], "not found")):
        with pytest.raises(SystemExit):
            quality.parse_args(argv)
        err = capsys.readouterr().err
        assert msg in err, (argv, err)


def test_quality_table_and_plot(tmp_path):
    from benchmarks import quality

    row = {k: 0.5 for k in ms.METRICS}
    result = {"dataset": "synthetic-scenes", "steps": 2, "batch_size": 8, "eval_images": 8, "seeds": [0, 1],
              "machine": "m", "real": {k: 1.0 for k in ms.METRICS},
              "modes": {"clade": {"params": 10, "macs": 2e6, "seconds_per_step": 0.5,
                                  "per_seed": [dict(row, miou=0.4), dict(row, miou=0.6)],
                                  "mean": dict(row, miou=0.5), "std": dict(row, miou=0.1)}}}
    text = quality.format_table(result)
    assert "clade" in text and "0.500±0.100" in text and "real" in text
    quality.plot_quality(result, str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").stat().st_size > 1000


@pytest.mark.slow
def test_quality_benchmark_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--modes", "none,clade", "--seeds", "1",
                          "--steps", "2", "--eval-images", "16", "--json", "--plot", str(tmp_path / "q.png")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["dataset"] == "synthetic-scenes" and r["steps"] == 2 and set(r["modes"]) == {"none", "clade"}
    for mode in ("none", "clade"):
        m = r["modes"][mode]
        assert len(m["per_seed"]) == 1 and {"miou", "pixel_accuracy"} <= set(m["mean"])
        assert m["params"] > 0 and m["macs"] > 0 and m["seconds_per_step"] > 0
    assert r["modes"]["clade"]["params"] > r["modes"]["none"]["params"]
    assert r["real"]["pixel_accuracy"] > 0.9
    assert (tmp_path / "q.png").exists() and (tmp_path / "q-samples.png").exists()
