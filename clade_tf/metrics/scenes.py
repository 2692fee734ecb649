"""Quality metrics on `synthetic-scenes` that need nothing downloaded.

The papers' protocol with this dataset's own networks: a small semantic segmenter
trained on the dataset's **real** images gives mIoU and pixel accuracy of generated
images against their input labels, and its pooled features a Fréchet distance
(`seg_fd`: a *segmenter* Fréchet distance, not Inception FID; only comparable with
itself). Targeted scores check each kind of structure (`clade_tf.data.scenes`), each a
Pearson correlation between the image's luminance and what the rendering puts there,
over the pixels of its class pooled across images, each image's part centred (so the
score is the structure inside each image, not differences between images):

- `sky_gradient`: sky luminance vs -(row in the image) (position in the image);
- `dome_shading`: dome luminance vs -(row inside the dome) (position in the object);
- `orb_radial`: orb luminance vs -(distance from the orb's centroid)^2;
- `road_lane`: road luminance vs its dashed middle-row marking;
- `building_edges`: building luminance vs -(lies on the line between two touching
  buildings), windows and other outlines left out (instance edges);
- `thin_iou` / `texture_iou`: the segmenter's mean IoU over the thin classes (pole,
  wire) / the textured classes.

Real images score close to 1 on each structure, a generator that paints the class
flat scores 0, one whose shading runs the wrong way scores below 0.

    seg = load_segmenter()                               # the shipped weights (clade_tf.resources)
    scorer = SceneScorer(seg, reference_images)          # uint8 real images
    metrics = scorer.score(images, labels, instances)    # generated for these maps
"""

import numpy as np

from clade_tf.data import scenes
from clade_tf.metrics.fid import frechet_distance, statistics
from clade_tf.metrics.segmentation import ConfusionMatrix

STRUCTURE_SCORES = ("sky_gradient", "dome_shading", "orb_radial", "road_lane", "building_edges")
METRICS = ("miou", "pixel_accuracy", "seg_fd", *STRUCTURE_SCORES, "thin_iou", "texture_iou")
# Higher is better for every metric but the distance.
LOWER_IS_BETTER = ("seg_fd",)


def build_segmenter(num_classes=scenes.NUM_CLASSES, width=16, name="scenes_segmenter"):
    """A small U-Net: images in [-1, 1] `[N, H, W, 3]` (H, W multiples of 8) ->
    `(logits [N, H, W, C], features [N, 8 * width])`. The features are the spatial means
    of the bottleneck and of two decoder stages (global and local appearance)."""
    import keras
    from keras import layers

    def conv(n, tag):
        return layers.Conv2D(n, 3, padding="same", activation="relu", name=tag)

    x = keras.Input((None, None, 3), name="image")
    e1 = conv(width, "e1b")(conv(width, "e1a")(x))
    e2 = conv(2 * width, "e2b")(conv(2 * width, "e2a")(layers.MaxPooling2D()(e1)))
    e3 = conv(3 * width, "e3b")(conv(3 * width, "e3a")(layers.MaxPooling2D()(e2)))
    e4 = conv(4 * width, "e4b")(conv(4 * width, "e4a")(layers.MaxPooling2D()(e3)))
    d3 = conv(3 * width, "d3")(layers.Concatenate()([layers.UpSampling2D()(e4), e3]))
    d2 = conv(2 * width, "d2")(layers.Concatenate()([layers.UpSampling2D()(d3), e2]))
    d1 = conv(width, "d1")(layers.Concatenate()([layers.UpSampling2D()(d2), e1]))
    logits = layers.Conv2D(num_classes, 1, name="logits")(d1)
    pool = layers.GlobalAveragePooling2D
    features = layers.Concatenate(name="features")([pool()(e4), pool()(d3), pool()(d1)])
    return keras.Model(x, [logits, features], name=name)


def _augment(tf, images, seed):
    """Blur and noise of random strength, and flips: generated images are softer and
    noisier than the renderings, and the segmenter must not depend on crisp edges."""
    n = tf.shape(images)[0]
    s = tf.random.stateless_uniform([3], seed, dtype=tf.int32, minval=0, maxval=2**30)
    blurred = tf.nn.avg_pool2d(tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC"), 3, 1, "VALID")
    a = tf.random.stateless_uniform([n, 1, 1, 1], [s[0], 1])
    noise = tf.random.stateless_normal(tf.shape(images), [s[1], 2]) * \
        tf.random.stateless_uniform([n, 1, 1, 1], [s[1], 3], maxval=0.06)
    return (1 - a) * images + a * blurred + noise


def train_segmenter(height=64, width=64, steps=1200, batch_size=16, train_samples=4096, seed=0,
                    progress=None, net_width=16):
    """Trains `build_segmenter` on real `synthetic-scenes` images (samples of the
    dataset's training stream with seed `seed + 7919`, a stream the GANs never see).
    Deterministic given the seed when TensorFlow's op determinism is on
    (`tf.config.experimental.enable_op_determinism()`, which the caller decides).
    `progress(step, loss)` is called every 100 steps. Returns the model."""
    import keras
    import tensorflow as tf

    data = [scenes.make_sample(seed + 7919, i, height, width) for i in range(train_samples)]
    images = np.stack([d["image"] for d in data])
    labels = np.stack([d["label"] for d in data])
    keras.utils.set_random_seed(seed)
    model = build_segmenter(width=net_width)
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    images_t, labels_t = tf.constant(images), tf.constant(labels)

    @tf.function
    def step(i):
        idx = tf.random.stateless_uniform([batch_size], [seed, i], maxval=train_samples, dtype=tf.int32)
        x, y = tf.gather(images_t, idx), tf.gather(labels_t, idx)
        flip = tf.random.stateless_uniform([batch_size, 1, 1], [seed + 1, i]) < 0.5
        x = tf.where(flip[..., None], x[:, :, ::-1], x)
        y = tf.where(flip, y[:, :, ::-1], y)
        x = _augment(tf, x, [seed + 2, i])
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)[0])
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for i in range(steps):
        loss = step(tf.constant(i))
        if progress and (i + 1) % 100 == 0:
            progress(i + 1, float(loss))
    return model


def load_segmenter(path=None, net_width=16):
    """The segmenter with weights from `path` (`.weights.h5`; default: the weights shipped in
    `clade_tf.resources`, trained by `python -m benchmarks.quality --train-segmenter`); one-line errors."""
    import os

    if path is None:
        from clade_tf import resources

        path = resources.segmenter_weights()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segmenter weights not found: {path} (python -m benchmarks.quality "
                                "--train-segmenter writes them)")
    model = build_segmenter(width=net_width)
    try:
        model.load_weights(path)
    except Exception as e:  # noqa: BLE001 (h5py / Keras raise several types for a damaged or foreign file)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not synthetic-scenes segmenter weights ({first})") from None
    return model


def segment(model, images_uint8, batch_size=64):
    """`(class ids [N, H, W], features [N, D])` of uint8 images."""
    ids, feats = [], []
    for i in range(0, len(images_uint8), batch_size):
        x = np.asarray(images_uint8[i:i + batch_size], np.float32) / 127.5 - 1.0
        logits, f = model(x, training=False)
        ids.append(np.asarray(logits).argmax(-1))
        feats.append(np.asarray(f, np.float64))
    return np.concatenate(ids), np.concatenate(feats)


def _correlation(a, b):
    """Pearson correlation of two pixel sets; 0 when either is constant (no structure), NaN
    when there are fewer than two pixels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def structure_targets(label, instance):
    """What the rendering puts at each structure's pixels: `{score: (mask, target)}` with
    boolean `mask` `[H, W]` and float `target` `[H, W]` (luminance should follow it)."""
    h, w = label.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t_dome, _ = scenes.relative_position(label, instance, scenes.DOME)
    _, r_orb = scenes.relative_position(label, instance, scenes.ORB)
    t_road, _ = scenes.relative_position(label, instance, scenes.ROAD)
    road = label == scenes.ROAD
    lane = road & (np.abs(t_road - 0.5) < 0.09) & (x % 8 < 5)
    b = label == scenes.BUILDING
    windows = b & (y % 8 >= 3) & (y % 8 < 6) & (x % 8 >= 3) & (x % 8 < 6)
    shared = scenes.shared_boundary(label, instance, scenes.BUILDING)
    outline = scenes.instance_boundary(label, instance, scenes.BUILDING)
    return {
        "sky_gradient": (label == scenes.SKY, -y),
        "dome_shading": (label == scenes.DOME, -t_dome),
        "orb_radial": (label == scenes.ORB, -r_orb ** 2),
        "road_lane": (road, lane.astype(np.float32)),
        "building_edges": (b & ~windows & (shared | ~outline), -shared.astype(np.float32)),
    }


def structure_scores(images_uint8, labels, instances):
    """The structure correlations (see the module doc) of uint8 images `[N, H, W, 3]` for
    their label and instance maps `[N, H, W]`: `{name: float}` (NaN: class absent)."""
    lum = np.asarray(images_uint8, np.float32).mean(-1) / 255.0
    pooled = {k: ([], []) for k in STRUCTURE_SCORES}
    for i in range(len(lum)):
        for name, (mask, target) in structure_targets(labels[i], instances[i]).items():
            if mask.any():  # centred per image: the score is the structure inside each image
                pooled[name][0].append(lum[i][mask] - lum[i][mask].mean())
                pooled[name][1].append(target[mask] - target[mask].mean())
    return {k: _correlation(np.concatenate(a), np.concatenate(b)) if a else float("nan")
            for k, (a, b) in pooled.items()}


def _mean_iou(iou, classes):
    v = [iou[c] for c in classes if not np.isnan(iou[c])]
    return float(np.mean(v)) if v else float("nan")


class SceneScorer:
    """Scores images of `synthetic-scenes` against their label maps.

    `reference_images`: real uint8 images (other samples than the scored ones) whose
    segmenter features are the Fréchet distance's reference statistics."""

    def __init__(self, segmenter, reference_images):
        self.segmenter = segmenter
        _, ref = segment(segmenter, reference_images)
        self.ref_stats = statistics(ref)

    def score(self, images_uint8, labels, instances):
        """`{metric: float}` for `METRICS` and `iou` (per class) of uint8 images
        `[N, H, W, 3]` generated for `labels` / `instances` `[N, H, W]`."""
        images_uint8 = np.asarray(images_uint8)
        if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[:3] != labels.shape:
            raise ValueError(f"images {images_uint8.dtype} {images_uint8.shape}, expected uint8 "
                             f"{(*labels.shape, 3)} for labels of shape {labels.shape}")
        ids, feats = segment(self.segmenter, images_uint8)
        cm = ConfusionMatrix(scenes.NUM_CLASSES).update(ids, np.asarray(labels))
        iou = cm.iou()
        out = {"miou": cm.mean_iou(), "pixel_accuracy": cm.pixel_accuracy(),
               "seg_fd": frechet_distance(*self.ref_stats, *statistics(feats))}
        out.update(structure_scores(images_uint8, labels, instances))
        out["thin_iou"] = _mean_iou(iou, scenes.STRUCTURES["thin"])
        out["texture_iou"] = _mean_iou(iou, scenes.STRUCTURES["texture"])
        out["iou"] = {scenes.CLASS_NAMES[c]: (None if np.isnan(v) else float(v)) for c, v in enumerate(iou)}
        return out
