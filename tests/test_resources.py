"""The package data (clade_tf.resources): the shipped example label maps are the demo page's
examples and cannot drift, the palettes and class names come from the shipped files, and the
ways to get a resource fail with one line naming what is missing."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from clade_tf import resources, viz
from clade_tf.data import scenes
from clade_tf.export import examples, web
from clade_tf.presets import PRESETS

PACKAGE = os.path.dirname(os.path.abspath(resources.__file__))
REGENERATE = 'python -c "from clade_tf.export import examples; examples.write()"'


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shipped_examples_equal_the_page_examples(preset):
    p = PRESETS[preset]
    want = examples.computed(preset)
    assert len(want) == resources.EXAMPLES_PER_PRESET
    folder = os.path.join(PACKAGE, "examples", preset)
    assert sorted(os.listdir(folder)) == [f"example{i}.png" for i in range(1, len(want) + 1)]
    for i, label in enumerate(want, 1):
        path = resources.example_label(preset, i)
        assert os.path.samefile(path, os.path.join(folder, f"example{i}.png"))
        img = Image.open(path)
        assert img.mode == "L", f"{path}: a single-channel PNG of class ids"
        got = np.asarray(img)
        assert got.shape == (p.image_height, p.image_width)
        assert (got == label).all(), f"{path} has drifted from example_labels: rewrite with {REGENERATE}"
        assert got.max() < p.num_classes and len(np.unique(got)) >= 2  # a scene, not one flat class
    # the page's first examples at the preset's size are the shipped ones
    gen = {"image_height": p.image_height, "image_width": p.image_width, "num_classes": p.num_classes}
    page = web.example_labels(preset, gen)
    for a, b in zip(want, page):
        assert (a == b).all()


def test_example_label_errors():
    with pytest.raises(ValueError, match=r"^preset 'nope': expected one of ade20k, .*synthetic-scenes$"):
        resources.example_label("nope")
    for i in (0, resources.EXAMPLES_PER_PRESET + 1, "1"):
        with pytest.raises(ValueError, match=rf"^example {i!r} of preset ade20k: expected 1\.\.2$"):
            resources.example_label("ade20k", i)
    with pytest.raises(FileNotFoundError, match=r"^palettes/nope\.json is not a file shipped in clade_tf\.resources$"):
        resources.path("palettes", "nope.json")
    assert resources.read_json("palettes", "nope.json") is None


def test_palettes_and_class_names_are_the_shipped_files():
    # the scenes palette is also defined in code: the shipped file must agree with it
    assert (viz.palette("synthetic-scenes", scenes.NUM_CLASSES) == scenes.PALETTE).all()
    with open(os.path.join(PACKAGE, "palettes", "ade20k.json")) as f:
        colours = json.load(f)["colours"]
    assert viz.palette("ade20k", 151).tolist() == colours[:151]
    assert not (viz.palette("ade20k", 151) == viz.voc_colormap(151)).all()
    # a palette shorter than the classes asked for falls back to the VOC map, whole
    assert (viz.palette("ade20k", len(colours) + 1) == viz.voc_colormap(len(colours) + 1)).all()
    assert web.class_names("ade20k-outdoor", 151)[:3] == ["wall", "building", "sky"]


def test_shipped_segmenter_loads_by_default():
    from clade_tf.metrics import scenes as ms

    path = resources.segmenter_weights()
    assert os.path.samefile(path, os.path.join(PACKAGE, "segmenters", resources.SEGMENTER))
    model = ms.load_segmenter()
    x = np.zeros((1, 64, 64, 3), np.float32)
    logits, _ = model(x)
    assert logits.shape == (1, 64, 64, scenes.NUM_CLASSES)
    # the default and the explicit path load the same weights
    explicit = ms.load_segmenter(path)
    assert all((a == b).all() for a, b in zip(model.get_weights(), explicit.get_weights()))


def test_write_rewrites_the_shipped_examples(tmp_path):
    examples.write(str(tmp_path))
    for preset in PRESETS:
        for i in range(1, resources.EXAMPLES_PER_PRESET + 1):
            a = np.asarray(Image.open(tmp_path / "examples" / preset / f"example{i}.png"))
            assert (a == np.asarray(Image.open(resources.example_label(preset, i)))).all()
    assert [n for n in os.listdir(tmp_path / "examples" / "ade20k") if ".tmp-" in n] == []
