"""Intra-class positional maps for CLADE-ICPE and instance edge maps (numpy side)."""

import numpy as np
from scipy import ndimage

# 8-connectivity, as OpenCV's connectedComponentsWithStats default used officially.
_EIGHT = np.ones((3, 3), dtype=bool)


def icpe_distance_map(label, ignore_class=None):
    """Intra-class positional encoding of a label map.

    For every connected component (8-connectivity) of every class, each pixel
    gets its offset from the component's centroid in y and x, divided by the
    component's largest absolute offset (+1e-5) along that axis, as in the
    official `cal_connectedComponents`.

    Args:
        label: int `[H, W]` label map.
        ignore_class: class id left at zero offset (the don't-care class; the
            official code skips raw label 0, which is ADE20K's don't-care).
    Returns:
        float32 `[H, W, 2]`: channel 0 the y offset, channel 1 the x offset.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"icpe_distance_map expects an [H, W] label map, got shape {label.shape}")
    h, w = label.shape
    comp = np.zeros((h, w), dtype=np.int64)
    n_total = 0
    for cls in np.unique(label):
        if ignore_class is not None and cls == ignore_class:
            continue
        lab, n = ndimage.label(label == cls, structure=_EIGHT)
        mask = lab > 0
        comp[mask] = lab[mask] + n_total
        n_total += n
    out = np.zeros((h, w, 2), dtype=np.float32)
    if n_total == 0:
        return out
    ys, xs = np.mgrid[0:h, 0:w]
    ids = comp.ravel()
    counts = np.bincount(ids, minlength=n_total + 1).astype(np.float64)
    counts[0] = 1.0
    for axis, coord in enumerate((ys, xs)):
        c = coord.ravel().astype(np.float64)
        centroid = np.bincount(ids, weights=c, minlength=n_total + 1) / counts
        offset = c - centroid[ids]
        offset[ids == 0] = 0.0
        maxabs = np.zeros(n_total + 1)
        np.maximum.at(maxabs, ids, np.abs(offset))
        out[..., axis] = (offset / (maxabs[ids] + 1e-5)).reshape(h, w)
    return out


def flip_distance_map(dist):
    """Horizontal flip of a `[H, W, 2]` positional map: mirror it and negate the x offset.

    The official code flips the map along H (vertically) while flipping the
    image horizontally; we do the geometrically correct thing.
    """
    out = dist[:, ::-1].copy()
    out[..., 1] = -out[..., 1]
    return out


def instance_edge_map(instance):
    """numpy twin of `clade_tf.layers.instance_edges` for one `[H, W]` map (bool)."""
    inst = np.asarray(instance)
    edge = np.zeros(inst.shape, dtype=bool)
    dx = inst[:, 1:] != inst[:, :-1]
    dy = inst[1:, :] != inst[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge
