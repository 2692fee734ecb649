"""Data files that ship inside the package: colour palettes, class names, the weights of the
`synthetic-scenes` segmenter and example label maps, one folder each:

    palettes/<preset>.json            {"colours": [[r, g, b], ...]}       (clade_tf.viz.palette)
    classes/<dataset>.json            {"names": [...]}                    (clade_tf.export.web.class_names)
    segmenters/synthetic-scenes-64.weights.h5                             (clade_tf.metrics.scenes)
    examples/<preset>/example<i>.png  class ids at the preset's size      (example_label)

They are read with `importlib.resources`, so a wheel installed anywhere finds the same files
as the checkout. The example label maps are the browser demo's first examples at each
preset's default size, written by `clade_tf.export.examples` (this module imports nothing of
the library at load time: the palette and class-name readers import it).

    from clade_tf import resources
    path = resources.example_label("ade20k", 1)   # a PNG that python -m export.infer reads
"""

import atexit
import contextlib
import importlib.resources
import json
import os

SEGMENTER = "synthetic-scenes-64.weights.h5"
EXAMPLES_PER_PRESET = 2

# Files read through a real path (Keras, PIL, shutil) are extracted when the package is not
# on the file system (a zip import); they stay until the interpreter exits.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def resource(*parts):
    """The shipped file `parts` (e.g. `("palettes", "ade20k.json")`) as an `importlib.resources`
    Traversable; it may not exist."""
    node = importlib.resources.files(__name__)
    for part in parts:
        node = node.joinpath(part)
    return node


def path(*parts):
    """A file-system path (str) of the shipped file `parts`; FileNotFoundError names it when
    it is not shipped."""
    node = resource(*parts)
    if not node.is_file():
        raise FileNotFoundError(f"{'/'.join(parts)} is not a file shipped in {__name__}")
    if isinstance(node, os.PathLike):
        return os.fspath(node)
    return os.fspath(_extracted.enter_context(importlib.resources.as_file(node)))


def read_json(*parts):
    """The parsed shipped JSON file `parts`, or None when there is none."""
    node = resource(*parts)
    if not node.is_file():
        return None
    try:
        return json.loads(node.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{'/'.join(parts)} in {__name__}: not valid JSON ({e})") from None


def segmenter_weights():
    """Path of the shipped `synthetic-scenes` segmenter weights (`.weights.h5`)."""
    return path("segmenters", SEGMENTER)


def example_label(preset, i=1):
    """Path of the shipped example label map `i` (1-based, up to `EXAMPLES_PER_PRESET`) of a
    preset: a single-channel PNG of class ids at the preset's default size."""
    from clade_tf.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {', '.join(sorted(PRESETS))}")
    if not isinstance(i, int) or not 1 <= i <= EXAMPLES_PER_PRESET:
        raise ValueError(f"example {i!r} of preset {preset}: expected 1..{EXAMPLES_PER_PRESET}")
    return path("examples", preset, f"example{i}.png")
