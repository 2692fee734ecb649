"""The deterministic sample stream: `tf.data` batches with an exact, resumable position.

Sample `k` of epoch `e` is `perm_e[k]`, with `perm_e` a permutation seeded by
`(seed, e)`, and its augmentation RNG seeded by `(seed, e, index)`. A run's data
position is therefore just its step count: resuming at step `s` rebuilds the
stream from sample `s * batch_size` and sees exactly the batches an
uninterrupted run would have seen.

Two streams follow that rule: `make_dataset` over any sample source (`len`,
`load(index, rng)`, see `clade_tf.data.sources`), and `make_cache_dataset` over a
prepared cache, read and cropped in TensorFlow ops. The sources themselves live in
`clade_tf.data.sources`.
"""

import atexit
import functools
import gc
import threading

import numpy as np
import tensorflow as tf

from clade_tf.data.folders import BadSample, crop_params

_DATASETS_MADE = threading.Event()


@atexit.register
def _release_iterators():
    """Frees every live `tf.data` iterator before the interpreter finalizes.

    An iterator destroyed during finalization waits for its in-flight `numpy_function`
    calls, which wait for the GIL the finalizing thread holds: a script that stops
    reading before the data is drained would hang at exit. Dropping the iterators'
    resources here, while other threads can still take the GIL, lets them finish."""
    if not _DATASETS_MADE.is_set():
        return
    from tensorflow.python.data.ops import iterator_ops

    for obj in gc.get_objects():
        if isinstance(obj, iterator_ops.OwnedIterator):
            obj._iterator_resource = None


def keys_for(use_instance, use_dist):
    """The maps a batch carries: `image`, `label`, then `instance` and `dist` when asked."""
    keys = ["image", "label"]
    if use_instance:
        keys.append("instance")
    if use_dist:
        keys.append("dist")
    return keys


_DTYPES = {"image": tf.float32, "label": tf.int32, "instance": tf.int32, "dist": tf.float32}


def steps_per_epoch(source, batch_size):
    """Whole batches per epoch (the last, partial batch of an epoch is never read)."""
    n = len(source)
    if n < batch_size:
        raise ValueError(f"the dataset has {n} samples, fewer than the batch size {batch_size}")
    return n // batch_size


def epoch_order(n, seed, epoch, shuffle=True):
    """The sample indices of `epoch`, in the order the pipeline reads them."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 7919]).permutation(n)


def sample_rng(seed, epoch, index):
    """The augmentation generator of sample `index` in `epoch` (same on every resume)."""
    return np.random.default_rng([seed, epoch, index])


def make_dataset(source, batch_size, height, width, seed=0, start_step=0, shuffle=True,
                 use_instance=False, use_dist=False, num_steps=None):
    """Batches of `source` from global step `start_step` on (forever, or `num_steps` batches).

    A `BadSample` stops the stream, unless the source has `skip_bad` set: then it is
    passed to `source.report_bad` and the next sample of the epoch's order is read in
    its place (deterministic, so resume stays exact).
    """
    _DATASETS_MADE.set()
    spe = steps_per_epoch(source, batch_size)
    per_epoch = spe * batch_size
    n = len(source)
    keys = keys_for(use_instance, use_dist)

    @functools.lru_cache(maxsize=4)
    def order(epoch):
        return epoch_order(n, seed, epoch, shuffle)

    def load_position(pos):
        pos = int(pos)
        epoch, k = divmod(pos, per_epoch)
        perm = order(epoch)
        for attempt in range(n):
            index = int(perm[(k + attempt) % n])
            rng = sample_rng(seed, epoch, index)
            try:
                s = source.load(index, rng)
                break
            except BadSample as e:
                if not getattr(source, "skip_bad", False):
                    raise
                source.report_bad(index, e)
        else:
            first = next(iter(getattr(source, "bad", {}).values()), "")
            raise ValueError(f"{getattr(source, 'where', 'the dataset')}: every one of its {n} samples is bad "
                             f"(e.g. {first})")
        return tuple(np.asarray(s[key], dtype=_DTYPES[key].as_numpy_dtype) for key in keys)

    def tf_load(pos):
        out = tf.numpy_function(load_position, [pos], [_DTYPES[k] for k in keys], stateful=False)
        shapes = {"image": [height, width, 3], "label": [height, width],
                  "instance": [height, width], "dist": [height, width, 2]}
        d = {}
        for key, t in zip(keys, out):
            t.set_shape(shapes[key])
            d[key] = t
        return d

    start = int(start_step) * batch_size
    stop = start + int(num_steps) * batch_size if num_steps is not None else np.iinfo(np.int64).max
    ds = tf.data.Dataset.range(start, stop)
    ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_cache_dataset(cache, batch_size, seed=0, start_step=0, num_steps=None, shuffle=True):
    """The batches `make_dataset` gives for a prepared cache (`sources.CacheSource`), read
    and cropped in TensorFlow ops (parallel, outside the GIL).

    Python only draws each epoch's order and crop offsets, once per epoch, with the same
    `epoch_order`, `sample_rng` and `folders.crop_params` as the raw-file path: both paths
    give the same batches, bit for bit, for the same seed.
    """
    _DATASETS_MADE.set()
    n = len(cache)
    per_epoch = steps_per_epoch(cache, batch_size) * batch_size
    start = int(start_step) * batch_size
    size = cache.layout.size

    def epochs():
        epoch, k = divmod(start, per_epoch)
        while True:
            order = epoch_order(n, seed, epoch, shuffle)[k:per_epoch]
            params = [crop_params(cache.prep, size, sample_rng(seed, epoch, int(i))) for i in order]
            yield (order.astype(np.int64), np.array([p[0] for p in params], np.int32),
                   np.array([p[1] for p in params], np.int32), np.array([p[2] for p in params], bool))
            epoch, k = epoch + 1, 0

    spec = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.bool))
    table = tf.data.Dataset.from_generator(epochs, output_signature=spec).unbatch()
    if num_steps is not None:
        table = table.take(int(num_steps) * batch_size)
    files = tf.constant(cache.files)
    parts = {k: (off, nb, shape, dtype) for k, off, nb, shape, dtype in cache.layout.parts()}
    ch, cw = cache.prep.crop_height, cache.prep.crop_width
    keys = cache.keys

    def load(index, x0, y0, flip):
        blob = tf.io.read_file(tf.gather(files, index))
        out = {}
        for k in keys:
            off, nb, shape, dtype = parts[k]
            a = tf.reshape(tf.io.decode_raw(tf.strings.substr(blob, off, nb), tf.as_dtype(dtype)), shape)
            a = a[y0:y0 + ch, x0:x0 + cw]
            a = tf.cond(flip, lambda a=a: tf.reverse(a, [1]), lambda a=a: a)
            if k == "dist":
                a = tf.cond(flip, lambda a=a: a * tf.constant([1.0, -1.0]), lambda a=a: a)
            elif k == "image":
                a = tf.cast(a, tf.float32) / 127.5 - 1.0
            out[k] = tf.ensure_shape(a, [ch, cw, *shape[2:]])
        return out

    ds = table.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
