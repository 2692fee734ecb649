"""A prepared dataset: samples decoded, resized and (for CLADE-ICPE) given their positional
maps once, so that training only reads bytes and crops them, in TensorFlow ops.

    python -m train.prepare --dataset ade20k --dataroot DIR --out CACHE [--icpe]
    python -m train --dataset ade20k --dataroot DIR --cache CACHE ...

Layout: `CACHE/manifest.json` and one file per sample, `CACHE/samples/<index>.bin`: the
arrays at the load size (before the random crop), concatenated: image uint8 [S, S, 3],
label int32 [S, S], then instance int32 [S, S] and dist float32 [S, S, 2] when prepared.
Every sample file has the same size; the manifest records each file's SHA-256, the
source files it came from (size and mtime) and the preprocessing, and a cache is
refused when any of them changed. The random crop and flip of sample `k` of epoch `e`
are drawn exactly as the raw-file path draws them (`folders.crop_params` with
`pipeline.sample_rng`), so both paths give the same batches for the same seed.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np

from clade_tf.data import folders
from clade_tf.outdir import sha256

FORMAT = "clade-tf-prepared/1"
MANIFEST = "manifest.json"


class CacheError(ValueError):
    """A prepared cache that cannot be used; the message names it and says why."""


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """Where each array lies in a sample file."""

    size: tuple  # (S_h, S_w)
    keys: tuple  # a prefix of ("image", "label", "instance", "dist") minus absent ones

    def parts(self):
        h, w = self.size
        shapes = {"image": ((h, w, 3), np.uint8), "label": ((h, w), np.int32),
                  "instance": ((h, w), np.int32), "dist": ((h, w, 2), np.float32)}
        offset, out = 0, []
        for k in self.keys:
            shape, dtype = shapes[k]
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out.append((k, offset, n, shape, dtype))
            offset += n
        return out

    @property
    def nbytes(self):
        return sum(p[2] for p in self.parts())


def _file_record(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _prepare_one(args):
    sample, spec, prep, keys, path = args
    arrays = folders.load_resized(sample, spec, prep, "instance" in keys, "dist" in keys)
    blob = b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k in keys)
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(blob).hexdigest(), arrays["label"].shape


def prepare(data, crop_size, out, use_instance, use_dist, phase="train", workers=1, progress=None):
    """Writes the prepared cache of `data` (a `DataConfig` of a folder dataset) at `out`.

    `crop_size`: the generator's `(height, width)`. Written into `out.tmp-<pid>` and
    renamed at the end; an existing `out` is refused (never overwritten). Bad samples
    stop it unless `data.skip_bad_samples` (then they are left out and reported).
    `progress(done, total)` is called as samples finish. Returns the manifest.
    """
    from clade_tf.data import pipeline
    from clade_tf.outdir import fsync_dir

    if os.path.exists(out):
        raise CacheError(f"{out} already exists; prepare into a new folder")
    samples, problems = folders.list_samples(data.dataset, data.dataroot, phase, use_instance)
    if problems and not data.skip_bad_samples:
        raise folders.BadSample(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if not samples:
        raise folders.BadSample(f"{data.dataroot}: no {phase} samples in the {data.dataset} layout")
    palette = folders.load_palette(data.palette) if data.palette else None
    spec = folders.LabelSpec(data.dataset, data.label_nc, data.contain_dontcare, palette)
    h, w = crop_size
    prep = folders.Preprocess(data.preprocess, data.load_size, h, w, flip=True)
    keys = ("image", "label") + (("instance",) if use_instance else ()) + (("dist",) if use_dist else ())
    tmp = f"{out}.tmp-{os.getpid()}"
    os.makedirs(os.path.join(tmp, "samples"))
    try:
        jobs = [(s, spec, prep, keys, os.path.join(tmp, "samples", f"{i:07d}.bin")) for i, s in enumerate(samples)]
        results, kept = [], []
        pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            mapped = pool.map(_prepare_one, jobs, chunksize=4) if pool else map(_prepare_one, jobs)
            it = iter(mapped)
            for i in range(len(jobs)):
                try:
                    results.append(next(it))
                    kept.append(i)
                except folders.BadSample as e:  # a worker's BadSample arrives here, in order
                    if not data.skip_bad_samples:
                        raise
                    pipeline.report_once(f"skipping: {e}")
                    os.remove(jobs[i][4]) if os.path.exists(jobs[i][4]) else None
                if progress:
                    progress(i + 1, len(jobs))
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        if not kept:
            raise folders.BadSample(f"{data.dataroot}: every {phase} sample is bad")
        # renumber the kept samples densely
        files = []
        for new, old in enumerate(kept):
            name = f"{new:07d}.bin"
            if old != new:
                os.rename(jobs[old][4], os.path.join(tmp, "samples", name))
            files.append({"name": name, "sha256": results[new][0]})
        size = results[0][1]
        manifest = {
            "format": FORMAT, "dataset": data.dataset, "phase": phase, "label_nc": data.label_nc,
            "contain_dontcare": data.contain_dontcare, "preprocess": data.preprocess, "load_size": data.load_size,
            "crop_size": [h, w], "size": list(size), "keys": list(keys),
            "sample_bytes": CacheLayout(tuple(size), keys).nbytes,
            "sources": [{k: _file_record(p) for k, p in dataclasses.asdict(samples[i]).items() if p}
                        for i in kept],
            "files": files,
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(os.path.join(tmp, "samples"))
        fsync_dir(tmp)
        os.rename(tmp, out)
        fsync_dir(os.path.dirname(os.path.abspath(out)))
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own temporary folder
        raise


def read_manifest(path):
    m = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise CacheError(f"prepared cache not found: {path}")
    try:
        with open(m) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CacheError(f"{path}: no {MANIFEST} (not a prepared cache, or an unfinished one)") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"{m}: unreadable ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{m}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class CacheSource:
    """A prepared cache as a sample source (`len`, `load(index, rng)`) plus a TensorFlow
    dataset of the same samples (`make_dataset`).

    Opening it checks the manifest against the run's data and crop size, the source
    files' sizes and mtimes, and every sample file's size and SHA-256 (`verify="sha256"`,
    hashed in threads; `"size"` skips the hashing)."""

    def __init__(self, path, data, crop_size, use_instance, use_dist, verify="sha256"):
        self.path, self.where = path, f"prepared cache {path}"
        m = self.manifest = read_manifest(path)
        want = {"dataset": data.dataset, "label_nc": data.label_nc, "contain_dontcare": data.contain_dontcare,
                "preprocess": data.preprocess, "load_size": data.load_size, "crop_size": list(crop_size)}
        diffs = [f"{k} {m.get(k)!r} (the run: {v!r})" for k, v in want.items() if m.get(k) != v]
        if diffs:
            raise CacheError(f"{path} was prepared with {', '.join(diffs)}; prepare it again for this run")
        for key, needed in (("instance", use_instance), ("dist", use_dist)):
            if needed and key not in m["keys"]:
                flag = "--icpe" if key == "dist" else "instance maps"
                raise CacheError(f"{path} has no {key} maps, which this generator needs (prepare with {flag})")
        self.keys = ("image", "label") + (("instance",) if use_instance else ()) + (("dist",) if use_dist else ())
        self.layout = CacheLayout(tuple(m["size"]), tuple(m["keys"]))
        self.files = [os.path.join(path, "samples", f["name"]) for f in m["files"]]
        self._check_sources()
        self._check_files(verify)
        h, w = crop_size
        self.prep = folders.Preprocess(data.preprocess, data.load_size, h, w, flip=True)
        self.bad_count = 0

    def _check_sources(self):
        for rec in self.manifest["sources"]:
            for r in rec.values():
                try:
                    st = os.stat(r["path"])
                except OSError:
                    raise CacheError(f"{self.path}: its source file {r['path']} is gone; prepare it again") from None
                if (st.st_size, st.st_mtime_ns) != (r["bytes"], r["mtime_ns"]):
                    raise CacheError(f"{self.path}: its source file {r['path']} changed since it was prepared; "
                                     "prepare it again")

    def _check_files(self, verify):
        size = self.layout.nbytes
        for f in self.files:
            try:
                n = os.path.getsize(f)
            except OSError:
                raise CacheError(f"{self.path}: sample file {f} is missing") from None
            if n != size:
                raise CacheError(f"{self.path}: sample file {f} has {n} bytes, expected {size} (damaged)")
        if verify == "sha256":
            with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as ex:
                for f, rec, digest in zip(self.files, self.manifest["files"], ex.map(sha256, self.files)):
                    if digest != rec["sha256"]:
                        raise CacheError(f"{self.path}: sample file {f} changed since it was prepared "
                                         "(SHA-256 differs); prepare the cache again")

    def __len__(self):
        return len(self.files)

    def read(self, index):
        """The arrays of sample `index` at the load size."""
        with open(self.files[int(index)], "rb") as f:
            blob = f.read()
        return {k: np.frombuffer(blob, dtype, n // np.dtype(dtype).itemsize, off).reshape(shape)
                for k, off, n, shape, dtype in self.layout.parts()}

    def load(self, index, rng):
        """Sample `index` cropped and flipped by `rng` (as `folders.load_folder_sample`)."""
        full = {k: v for k, v in self.read(index).items() if k in self.keys}
        return folders.crop_sample(full, self.prep, folders.crop_params(self.prep, self.layout.size, rng))

    def make_dataset(self, batch_size, seed=0, start_step=0, num_steps=None, shuffle=True):
        """The batches of `pipeline.make_dataset` over this cache, read and cropped in
        TensorFlow ops (parallel, outside the GIL); Python only draws each epoch's order
        and crop offsets, once per epoch."""
        import tensorflow as tf

        from clade_tf.data import pipeline

        pipeline._DATASETS_MADE.set()
        n = len(self)
        per_epoch = pipeline.steps_per_epoch(self, batch_size) * batch_size
        start = int(start_step) * batch_size
        size = self.layout.size

        def epochs():
            epoch, k = divmod(start, per_epoch)
            while True:
                order = pipeline.epoch_order(n, seed, epoch, shuffle)[k:per_epoch]
                params = [folders.crop_params(self.prep, size, pipeline.sample_rng(seed, epoch, int(i)))
                          for i in order]
                yield (order.astype(np.int64), np.array([p[0] for p in params], np.int32),
                       np.array([p[1] for p in params], np.int32), np.array([p[2] for p in params], bool))
                epoch, k = epoch + 1, 0

        spec = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.bool))
        table = tf.data.Dataset.from_generator(epochs, output_signature=spec).unbatch()
        if num_steps is not None:
            table = table.take(int(num_steps) * batch_size)
        files = tf.constant(self.files)
        parts = {k: (off, nb, shape, dtype) for k, off, nb, shape, dtype in self.layout.parts()}
        ch, cw = self.prep.crop_height, self.prep.crop_width
        keys = self.keys

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
