"""tf.data pipelines with an exact, resumable data position.

Sample `k` of epoch `e` is `perm_e[k]`, with `perm_e` a permutation seeded by
`(seed, e)`, and its augmentation RNG seeded by `(seed, e, index)`. A run's data
position is therefore just its step count: resuming at step `s` rebuilds the
stream from sample `s * batch_size` and sees exactly the batches an
uninterrupted run would have seen.
"""

import atexit
import functools
import gc
import sys
import threading

import numpy as np
import tensorflow as tf

from clade_tf.data import folders, scenes, synthetic
from clade_tf.data.icpe import icpe_distance_map


class SyntheticSource:
    """The embedded procedural dataset (`length` samples per epoch)."""

    def __init__(self, num_classes, height, width, length=1024, seed=0, use_dist=False):
        self.num_classes, self.height, self.width = num_classes, height, width
        self.length, self.seed, self.use_dist = int(length), int(seed), use_dist
        self.bad_count = 0

    def __len__(self):
        return self.length

    def make_sample(self, index):
        return synthetic.make_sample(self.seed, int(index), self.num_classes, self.height, self.width)

    def load(self, index, rng):
        s = self.make_sample(index)
        if self.use_dist:
            s["dist"] = icpe_distance_map(s["label"])
        return s


class ScenesSource(SyntheticSource):
    """The `synthetic-scenes` dataset (`clade_tf.data.scenes`), `length` samples per epoch."""

    def __init__(self, height, width, length=1024, seed=0, use_dist=False):
        super().__init__(scenes.NUM_CLASSES, height, width, length, seed, use_dist)

    def make_sample(self, index):
        return scenes.make_sample(self.seed, int(index), self.height, self.width)


class FolderSource:
    """A real dataset on disk (see `folders.list_samples`).

    With `skip_bad=True` a bad sample is reported once on stderr, counted in
    `bad_count`, and replaced by the next sample of the epoch's order
    (deterministic, so resume stays exact); otherwise it raises `BadSample`.
    """

    def __init__(self, samples, spec, prep, use_instance, use_dist, skip_bad=False, where="the dataset"):
        if not samples:
            raise ValueError(f"{where}: no usable samples")
        self.where = where
        self.samples = list(samples)
        self.spec, self.prep = spec, prep
        self.use_instance, self.use_dist = use_instance, use_dist
        self.skip_bad = skip_bad
        self.bad = {}
        self._lock = threading.Lock()

    @property
    def bad_count(self):
        return len(self.bad)

    def __len__(self):
        return len(self.samples)

    def load(self, index, rng):
        s = self.samples[int(index)]
        return folders.load_folder_sample(s, self.spec, self.prep, rng, self.use_instance, self.use_dist)

    def report_bad(self, index, err):
        with self._lock:
            if index not in self.bad:
                self.bad[index] = str(err)
                report_once(f"skipping bad sample ({len(self.bad)} so far): {err}", key=str(err))


_REPORTED = set()
_REPORTED_LOCK = threading.Lock()


def report_once(message, key=None):
    """Prints `message` on stderr once per process (keyed by `key`): the training data,
    the sample batch and `--label-nc auto` each open the same folder."""
    key = message if key is None else key
    with _REPORTED_LOCK:
        if key in _REPORTED:
            return
        _REPORTED.add(key)
    print(message, file=sys.stderr)


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
    keys = ["image", "label"]
    if use_instance:
        keys.append("instance")
    if use_dist:
        keys.append("dist")
    return keys


_DTYPES = {"image": tf.float32, "label": tf.int32, "instance": tf.int32, "dist": tf.float32}


def steps_per_epoch(source, batch_size):
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
    """Batches from global step `start_step` on (forever, or `num_steps` batches)."""
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
            except folders.BadSample as e:
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
