"""Colour palettes and sample grids (label | generated | real)."""

import os

import numpy as np

from clade_tf import resources


def voc_colormap(n):
    """The PASCAL-VOC bit-interleaving colour map: n distinct RGB colours (uint8)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def palette(preset_name, num_classes):
    """`[num_classes, 3]` uint8 colours: the shipped `palettes/<preset>.json` of
    `clade_tf.resources` when it has that many colours (a list of [r, g, b]), else the VOC
    colour map."""
    data = resources.read_json("palettes", f"{preset_name}.json")
    if data is not None:
        colours = np.asarray(data["colours"], dtype=np.uint8)
        if len(colours) >= num_classes:
            return colours[:num_classes]
    return voc_colormap(num_classes)


def colorize(label, colours):
    """int `[..., H, W]` -> uint8 `[..., H, W, 3]`."""
    return colours[np.asarray(label)]


def to_uint8(images):
    """float images in [-1, 1] -> uint8."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def sample_grid(labels, fakes, reals, colours, gap=2):
    """One row per sample: coloured label | generated | real, as a uint8 image."""
    labels, fakes, reals = np.asarray(labels), to_uint8(fakes), to_uint8(reals)
    n, h, w = labels.shape
    cols = [colorize(labels, colours), fakes, reals]
    grid = np.full((n * h + (n - 1) * gap, 3 * w + 2 * gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        for j, col in enumerate(cols):
            y, x = i * (h + gap), j * (w + gap)
            grid[y:y + h, x:x + w] = col[i]
    return grid


def save_png(path, array):
    """Writes a PNG atomically (temp file, then rename)."""
    from PIL import Image

    tmp = f"{path}.tmp-{os.getpid()}.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)
