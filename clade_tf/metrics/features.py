"""Inception features of image sets: batched over a `tf.data` pipeline, any image size.

Images are uint8 (0..255, divided by 255 as torchvision's ToTensor does) or floats in
[0, 1]; the model (`fid_inception`) resizes them to 299x299 itself.
"""

import os
import re
import weakref

import numpy as np
import tensorflow as tf

from clade_tf.metrics.inception import FEATURE_DIM

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
RANGE_TOLERANCE = 1e-3  # floats a hair outside [0, 1] (a resize's overshoot) are still images in [0, 1]


def image_files(folder):
    """The image files directly in `folder` (by extension, any case), sorted by name as pytorch-fid sorts them."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such image folder")
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_image(path, size=None):
    """An image file as uint8 `[H, W, 3]` (RGB); with `size=(height, width)` resized with PIL's
    bicubic filter, the resize CLADE's data loader applies to its images."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def image_folder_dataset(folder, batch_size=50, size=None):
    """A `tf.data.Dataset` of uint8 batches `[B, H, W, 3]` of the images in `folder` (sorted).

    With `size=(height, width)` every image is resized to it (PIL bicubic); without, images
    keep their size and a batch ends early where the size changes. Decoding runs ahead of
    the network (prefetch).
    """
    files = image_files(folder)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}, expected >= 1")

    def batches():
        batch = []
        for path in files:
            im = load_image(path, size)
            if batch and im.shape != batch[0].shape:
                yield np.stack(batch)
                batch = []
            batch.append(im)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    spec = tf.TensorSpec([None, None, None, 3], tf.uint8)
    return tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(2)


def _as_batches(images, batch_size):
    """`images` (an array, a Dataset of images or batches, or an iterable of batches) as an
    iterable of `[B, H, W, 3]` arrays or tensors."""
    if isinstance(images, tf.data.Dataset):
        rank = images.element_spec.shape.rank
        if rank == 3:
            images = images.batch(batch_size)
        elif rank != 4:
            raise ValueError(f"the dataset yields {images.element_spec}, expected images [H, W, 3] or "
                             "batches [B, H, W, 3]")
        return images.prefetch(tf.data.AUTOTUNE)
    if isinstance(images, (np.ndarray, tf.Tensor)):
        if images.ndim != 4:
            raise ValueError(f"images have shape {tuple(images.shape)}, expected [N, H, W, 3]")
        return (images[i:i + batch_size] for i in range(0, int(images.shape[0]), batch_size))
    return images


def _to_unit_float(batch, index):
    """A batch as float32 in [0, 1]: uint8 / 255; floats are checked to be in [0, 1]."""
    x = tf.convert_to_tensor(batch)
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise ValueError(f"batch {index} has shape {tuple(x.shape)}, expected [B, H, W, 3] (RGB)")
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0
    if not x.dtype.is_floating:
        raise ValueError(f"batch {index} is {x.dtype.name}, expected uint8 or floats in [0, 1]")
    x = tf.cast(x, tf.float32)
    lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
    if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):  # also refuses NaN
        raise ValueError(f"batch {index} has values in [{lo:.3g}, {hi:.3g}], expected images in [0, 1] "
                         "(a generator's [-1, 1] output needs (x + 1) / 2)")
    return x


_RUNNERS = weakref.WeakKeyDictionary()


def _runner(model):
    """The model as one traced function for every batch and image size (tracing the
    network takes seconds), kept as long as the model lives."""
    if model not in _RUNNERS:
        ref = weakref.ref(model)  # a strong reference in the value would keep the key alive
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        _RUNNERS[model] = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
    return _RUNNERS[model]


def _python_errors(batches):
    """Iterates `batches`; an image that cannot be read inside a `tf.data` pipeline
    (`image_folder_dataset`) raises its own one-line `ValueError`, not TensorFlow's
    op error with the generator's traceback inside."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            found = re.findall(r"^ValueError: (.+)$", e.message, re.MULTILINE)
            if not found:
                raise
            raise ValueError(found[-1]) from None
        yield batch


def extract_features(model, images, batch_size=50):
    """The model's features of every image, in order, as float64 `[N, D]`.

    `model`: from `fid_inception` (images in [0, 1], any size). `images`: a uint8 or float
    array `[N, H, W, 3]`, a `tf.data.Dataset` of images or of batches, or an iterable of
    batches (e.g. `image_folder_dataset`). Batches of different sizes are fine.
    """
    run = _runner(model)
    out = []
    for i, batch in enumerate(_python_errors(_as_batches(images, batch_size))):
        f = run(_to_unit_float(batch, i)).numpy()
        out.append(f.astype(np.float64))
    if not out:
        raise ValueError("no images to compute features of")
    feats = np.concatenate(out)
    if feats.ndim != 2:
        raise ValueError(f"the model gives features of shape {feats.shape[1:]}, expected [{FEATURE_DIM}]")
    return feats
