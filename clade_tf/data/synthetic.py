"""The embedded default dataset: procedural label maps and class-textured images.

Nothing is downloaded. Sample `i` of a dataset with seed `s` is a pure function of
`(s, i)`. Each label map is a background class plus a few rectangles and ellipses
(each shape its own instance id); each class paints its region with its own
colour and texture, so a generator that learned class conditioning visibly paints
every region right, and `fidelity` can measure it.
"""

import numpy as np

# Base colours in [0, 1] (well separated) and texture per class.
CLASS_COLOURS = np.array(
    [
        [0.35, 0.60, 0.95],  # 0 sky: blue, smooth vertical gradient
        [0.20, 0.65, 0.20],  # 1 grass: green, fine noise
        [0.85, 0.20, 0.15],  # 2 brick: red, horizontal stripes
        [0.95, 0.85, 0.20],  # 3 sand: yellow, vertical stripes
        [0.45, 0.15, 0.55],  # 4 plum: purple, checkerboard
        [0.85, 0.85, 0.85],  # 5 snow: light grey, diagonal stripes
        [0.10, 0.10, 0.10],  # 6 asphalt: near black, speckles
        [0.95, 0.55, 0.75],  # 7 blossom: pink, dots
    ],
    dtype=np.float32,
)
CLASS_NAMES = ["sky", "grass", "brick", "sand", "plum", "snow", "asphalt", "blossom"]
MAX_CLASSES = len(CLASS_COLOURS)
TEXTURE_AMPLITUDE = 0.12


def _texture(cls, h, w, rng):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if cls == 0:
        t = (y / max(h - 1, 1) - 0.5) * 2
    elif cls == 1:
        t = rng.uniform(-1, 1, (h, w))
    elif cls == 2:
        t = np.sign(np.sin(y * np.pi / 3))
    elif cls == 3:
        t = np.sign(np.sin(x * np.pi / 3))
    elif cls == 4:
        t = np.where(((y // 4) + (x // 4)) % 2 == 0, 1.0, -1.0)
    elif cls == 5:
        t = np.sign(np.sin((x + y) * np.pi / 4))
    elif cls == 6:
        t = np.where(rng.uniform(size=(h, w)) < 0.1, 1.0, -0.1)
    else:
        t = np.where((y % 6 < 2) & (x % 6 < 2), 1.0, -0.3)
    return t.astype(np.float32)


def render(label, rng=None):
    """Paints a label map: `[H, W]` int -> `[H, W, 3]` float32 image in [-1, 1]."""
    rng = rng if rng is not None else np.random.default_rng(0)
    h, w = label.shape
    img = np.zeros((h, w, 3), dtype=np.float32)
    for cls in np.unique(label):
        m = label == cls
        tex = _texture(int(cls), h, w, rng)[m]
        img[m] = CLASS_COLOURS[cls] + TEXTURE_AMPLITUDE * tex[:, None]
    return np.clip(img, 0.0, 1.0) * 2.0 - 1.0


def make_sample(seed, index, num_classes, height, width):
    """Deterministic sample `index` of the dataset with `seed`.

    Returns a dict of numpy arrays: `label` int32 [H, W], `instance` int32 [H, W],
    `image` float32 [H, W, 3] in [-1, 1].
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"synthetic data supports 2..{MAX_CLASSES} classes, got {num_classes}")
    rng = np.random.default_rng([seed, index])
    label = np.full((height, width), rng.integers(num_classes), dtype=np.int32)
    instance = np.zeros((height, width), dtype=np.int32)
    y, x = np.mgrid[0:height, 0:width]
    for inst_id in range(1, rng.integers(3, 7) + 1):
        cls = rng.integers(num_classes)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = rng.uniform(0.1, 0.35) * height
        rx = rng.uniform(0.1, 0.35) * width
        if rng.uniform() < 0.5:
            m = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        else:
            m = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        label[m] = cls
        instance[m] = inst_id
    return {"label": label, "instance": instance, "image": render(label, rng)}


def _box_blur(img, k=5):
    """Mean filter over k x k (same size, edge-normalized) to remove the textures."""
    from scipy import ndimage

    return ndimage.uniform_filter(img, size=(1, k, k, 1), mode="nearest")


def fidelity(images, labels, num_classes):
    """Fraction of pixels whose locally averaged colour is closest to their own class's.

    Args:
        images: `[N, H, W, 3]` in [-1, 1] (generated or real).
        labels: `[N, H, W]` int class ids.
        num_classes: classes in use.
    Returns:
        float in [0, 1]: ~1 for the real images, ~chance for an untrained generator.
    """
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    smooth = (_box_blur(images) + 1.0) / 2.0
    protos = CLASS_COLOURS[:num_classes]  # texture means are ~0, so the base colour
    d = ((smooth[..., None, :] - protos[None, None, None]) ** 2).sum(-1)  # [N,H,W,K]
    return float((d.argmin(-1) == labels).mean())
