"""`synthetic-scenes`: a procedural dataset on which the normalization modes differ.

Nothing is downloaded; sample `i` of seed `s` is a pure function of `(s, i)`. Each
scene has a sky above a horizon, a ground below it, and objects of 12 more classes.
The classes carry the structures the CLADE papers discuss:

- position in the image: the sky's colour runs from pale at the top of the *image*
  to deep blue at its bottom, wherever the horizon is;
- position inside the object: each dome is bright at its own top and dark at its
  own bottom, each orb bright at its centroid and dark at its rim, each road has a
  dashed line along its own middle row. CLADE's per-class lookup has no position;
  CLADE-ICPE's positional map (offsets from the component's centroid) has exactly
  this, SPADE gets it from convolutions over the label map;
- touching instances of one class: buildings stand side by side and each has a dark
  outline, so the line between two touching buildings is visible in the image but
  only the instance map (the generator's edge channel) says where it is;
- textures at several scales: fine noise (grass), 4-px stripes (brick), 3-px ripples
  (water), an 8-px window grid (building), 8-px checks (tiles), 16-px blotches (sand);
- thin structures: 2-px poles and 1-px wires.

`STRUCTURES` names the classes of each structure; `clade_tf.metrics.scenes` scores them.
"""

import numpy as np
from scipy import ndimage

CLASS_NAMES = ("sky", "grass", "sand", "water", "road", "building", "dome", "orb",
               "pole", "wire", "brick", "tiles", "foliage", "flowers")
NUM_CLASSES = len(CLASS_NAMES)
SKY, GRASS, SAND, WATER, ROAD, BUILDING, DOME, ORB, POLE, WIRE, BRICK, TILES, FOLIAGE, FLOWERS = range(NUM_CLASSES)
GROUNDS = (GRASS, SAND, WATER)
# The classes of each kind of structure (what `clade_tf.metrics.scenes` scores).
STRUCTURES = {"image_position": (SKY,), "object_position": (DOME, ORB, ROAD),
              "instance_edges": (BUILDING,), "thin": (POLE, WIRE),
              "texture": (GRASS, WATER, BRICK, TILES, SAND, FOLIAGE, FLOWERS)}

# Display colours (the label palette, also `clade_tf/resources/palettes/synthetic-scenes.json`).
PALETTE = np.array([[70, 130, 180], [107, 142, 35], [220, 200, 120], [0, 80, 160], [128, 64, 128],
                    [70, 70, 70], [190, 153, 153], [250, 170, 30], [153, 153, 153], [20, 20, 20],
                    [180, 60, 50], [0, 160, 160], [0, 100, 0], [255, 130, 200]], dtype=np.uint8)

# Base colours in [0, 1].
_BASE = np.array([
    [0.0, 0.0, 0.0],     # sky: its own gradient, see _sky
    [0.25, 0.60, 0.20],  # grass
    [0.85, 0.75, 0.45],  # sand
    [0.10, 0.45, 0.55],  # water
    [0.30, 0.30, 0.33],  # road
    [0.80, 0.72, 0.60],  # building
    [0.70, 0.55, 0.45],  # dome
    [1.00, 0.55, 0.10],  # orb
    [0.35, 0.35, 0.40],  # pole
    [0.05, 0.05, 0.05],  # wire
    [0.75, 0.25, 0.20],  # brick
    [0.20, 0.65, 0.65],  # tiles
    [0.10, 0.35, 0.15],  # foliage
    [0.90, 0.45, 0.70],  # flowers
], dtype=np.float32)
_SKY_TOP = np.array([0.75, 0.90, 1.00], np.float32)
_SKY_BOTTOM = np.array([0.10, 0.30, 0.75], np.float32)
_OUTLINE = np.array([0.12, 0.10, 0.10], np.float32)
_WINDOW = np.array([0.15, 0.20, 0.45], np.float32)
_LANE = np.array([0.95, 0.95, 0.85], np.float32)

MIN_SIZE = 32


class _Canvas:
    """Label and instance maps that shapes are painted into (later shapes on top)."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.y, self.x = np.mgrid[0:h, 0:w].astype(np.float32)
        self.label = np.zeros((h, w), np.int32)
        self.instance = np.zeros((h, w), np.int32)
        self.next_id = 1

    def paint(self, mask, cls):
        if mask.any():
            self.label[mask] = cls
            self.instance[mask] = self.next_id
            self.next_id += 1

    def rect(self, y0, y1, x0, x1):
        return (self.y >= y0) & (self.y < y1) & (self.x >= x0) & (self.x < x1)

    def ellipse(self, cy, cx, ry, rx):
        return ((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2 <= 1.0


def _layout(rng, h, w):
    """The label and instance maps of one scene."""
    c = _Canvas(h, w)
    horizon = int(rng.uniform(0.3, 0.55) * h)
    c.paint(c.y < horizon, SKY)
    c.paint(c.y >= horizon, GROUNDS[rng.integers(len(GROUNDS))])
    if rng.uniform() < 0.7:  # a road band across the ground
        top = rng.uniform(horizon + 0.1 * h, 0.85 * h)
        c.paint(c.rect(top, top + rng.uniform(0.12, 0.2) * h, rng.uniform(-0.2, 0.3) * w,
                       rng.uniform(0.7, 1.2) * w), ROAD)
    # a row of touching buildings standing on the horizon
    x = rng.uniform(-0.1, 0.5) * w
    for _ in range(rng.integers(2, 5)):
        bw = rng.uniform(0.1, 0.2) * w
        c.paint(c.rect(horizon - rng.uniform(0.15, 0.28) * h, horizon + 0.04 * h, x, x + bw), BUILDING)
        x += bw
    kinds = [(BRICK, 0.5), (TILES, 0.4), (FOLIAGE, 0.6), (FLOWERS, 0.5), (DOME, 0.9), (DOME, 0.6),
             (ORB, 0.8), (ORB, 0.4)]
    for i in rng.permutation(len(kinds)):
        cls, p = kinds[i]
        if rng.uniform() >= p:
            continue
        cy, cx = rng.uniform(0.15, 0.95) * h, rng.uniform(0.05, 0.95) * w
        if cls in (BRICK, TILES):
            hh, hw = rng.uniform(0.08, 0.18) * h, rng.uniform(0.1, 0.22) * w
            c.paint(c.rect(cy - hh, cy + hh, cx - hw, cx + hw), cls)
        elif cls == FOLIAGE:  # a blob of three discs
            m = np.zeros((h, w), bool)
            for _ in range(3):
                r = rng.uniform(0.06, 0.12) * h
                m |= c.ellipse(cy + rng.uniform(-0.08, 0.08) * h, cx + rng.uniform(-0.08, 0.08) * w, r, r)
            c.paint(m, cls)
        elif cls == ORB:
            r = rng.uniform(0.08, 0.15) * min(h, w)
            c.paint(c.ellipse(cy, cx, r, r), cls)
        else:  # dome / flowers: ellipses
            c.paint(c.ellipse(cy, cx, rng.uniform(0.1, 0.2) * h, rng.uniform(0.1, 0.22) * w), cls)
    for _ in range(rng.integers(1, 4)):  # poles: 2 px wide, from above the horizon into the ground
        x0 = rng.integers(1, w - 2)
        c.paint(c.rect(rng.uniform(0.1, 0.4) * h, rng.uniform(0.55, 0.95) * h, x0, x0 + 2), POLE)
    for _ in range(rng.integers(0, 3)):  # wires: 1-px lines across the sky
        y0, y1 = rng.uniform(0.05, 0.4, size=2) * h
        yy = y0 + (y1 - y0) * c.x / (w - 1)
        c.paint(np.abs(c.y - np.round(yy)) < 0.5, WIRE)
    return c.label, c.instance


def relative_position(label, instance, cls):
    """For the pixels of class `cls`: each one's vertical position inside its instance
    (0 at the instance's top row, 1 at its bottom row) and its distance from the
    instance's centroid (1 at the farthest pixel). Returns `(t, r)` `[H, W]` float32
    maps, 0 outside the class."""
    t = np.zeros(label.shape, np.float32)
    r = np.zeros(label.shape, np.float32)
    for inst in np.unique(instance[label == cls]):
        m = (label == cls) & (instance == inst)
        ys, xs = np.nonzero(m)
        top, bottom = ys.min(), ys.max()
        t[m] = (ys - top) / max(bottom - top, 1)
        d = np.hypot(ys - ys.mean(), xs - xs.mean())
        r[m] = d / max(d.max(), 1e-6)
    return t, r


def instance_boundary(label, instance, cls):
    """Pixels of class `cls` with a 4-neighbour of another instance (the outline)."""
    pad_i = np.pad(instance, 1, mode="edge")
    h, w = instance.shape
    other = np.zeros((h, w), bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        other |= pad_i[dy:dy + h, dx:dx + w] != instance
    return other & (label == cls)


def shared_boundary(label, instance, cls):
    """Outline pixels of class `cls` whose other side is the same class (touching
    instances): what only the instance map can tell."""
    pad_l, pad_i = np.pad(label, 1, mode="edge"), np.pad(instance, 1, mode="edge")
    h, w = label.shape
    out = np.zeros((h, w), bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        out |= (pad_l[dy:dy + h, dx:dx + w] == cls) & (pad_i[dy:dy + h, dx:dx + w] != instance)
    return out & (label == cls)


def render(label, instance, rng):
    """The image of a scene: `[H, W, 3]` float32 in [-1, 1]."""
    h, w = label.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _BASE[label].copy()
    shade = np.ones((h, w), np.float32)
    sky = label == SKY
    v = (y / (h - 1))[..., None]
    img[sky] = ((1 - v) * _SKY_TOP + v * _SKY_BOTTOM)[sky]
    # textures
    noise = rng.uniform(-1, 1, (h, w)).astype(np.float32)
    blotch = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4 * h / 64)
    blotch = (blotch / (np.abs(blotch).max() + 1e-6)).astype(np.float32)
    leaves = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.0)
    leaves = (leaves / (np.abs(leaves).max() + 1e-6)).astype(np.float32)
    shade += np.where(label == GRASS, 0.25 * noise, 0)
    shade += np.where(label == SAND, 0.2 * blotch, 0)
    shade += np.where(label == WATER, 0.25 * np.sin(2 * np.pi * (y / 3 + x / 24)), 0)
    shade += np.where(label == BRICK, np.where(y % 4 < 1, 0.5, 0.0), 0)
    shade += np.where(label == TILES, np.where((y // 8 + x // 8) % 2 == 0, 0.25, -0.25), 0)
    shade += np.where(label == FOLIAGE, 0.5 * leaves, 0)
    img = img * shade[..., None]
    dots = (label == FLOWERS) & (y % 6 < 2) & (x % 6 < 2)
    img[dots] = 1.0
    # position inside the object
    for cls in (DOME, ORB, ROAD):
        if not (label == cls).any():
            continue
        t, r = relative_position(label, instance, cls)
        m = label == cls
        if cls == DOME:
            img[m] *= (1.35 - 0.9 * t[m])[:, None]
        elif cls == ORB:
            img[m] *= (1.1 - 0.85 * r[m] ** 2)[:, None]
        else:  # dashed lane marking along each road's middle row
            lane = m & (np.abs(t - 0.5) < 0.09) & (x % 8 < 5)
            img[lane] = _LANE
    # buildings: an 8-px window grid and a dark outline around every building
    b = label == BUILDING
    windows = b & (y % 8 >= 3) & (y % 8 < 6) & (x % 8 >= 3) & (x % 8 < 6)
    img[windows] = _WINDOW
    img[instance_boundary(label, instance, BUILDING)] = _OUTLINE
    return (np.clip(img, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def make_sample(seed, index, height=64, width=64):
    """Deterministic sample `index` of seed `seed`: a dict of `label` int32 [H, W],
    `instance` int32 [H, W] and `image` float32 [H, W, 3] in [-1, 1]."""
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"synthetic-scenes is at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")
    rng = np.random.default_rng([seed, index])
    label, instance = _layout(rng, height, width)
    return {"label": label, "instance": instance, "image": render(label, instance, rng)}
