"""The example label maps that ship in `clade_tf.resources` (`examples/<preset>/example<i>.png`):
the browser demo's first examples (`clade_tf.export.web.example_labels`) at each preset's
default size, single-channel PNGs of class ids as `python -m export.infer` reads them.

`tests/test_resources.py` checks that the shipped files equal `computed(preset)`; after a
change to the examples, rewrite them in the checkout with

    python -c "from clade_tf.export import examples; examples.write()"
"""

import os

import numpy as np

from clade_tf import resources, viz
from clade_tf.export.web import example_labels
from clade_tf.presets import PRESETS


def computed(preset):
    """The example label maps (int32 `[H, W]`) that ship for `preset`: the demo page's first
    `resources.EXAMPLES_PER_PRESET` examples at the preset's default size."""
    p = PRESETS[preset]
    gen = {"image_height": p.image_height, "image_width": p.image_width, "num_classes": p.num_classes}
    return example_labels(preset, gen, n=resources.EXAMPLES_PER_PRESET)


def write(out_dir=None):
    """Writes `examples/<preset>/example<i>.png` of every preset under `out_dir` (default: the
    folder of `clade_tf.resources`, i.e. the checkout's package data)."""
    out_dir = out_dir or os.path.dirname(os.path.abspath(resources.__file__))
    for preset in PRESETS:
        labels = computed(preset)
        if max(int(a.max()) for a in labels) > 255:
            raise ValueError(f"preset {preset}: class ids above 255 do not fit an 8-bit label PNG")
        folder = os.path.join(out_dir, "examples", preset)
        os.makedirs(folder, exist_ok=True)
        for i, label in enumerate(labels, 1):
            viz.save_png(os.path.join(folder, f"example{i}.png"), label.astype(np.uint8))
