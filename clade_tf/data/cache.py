"""A prepared dataset, the writing side: samples decoded, resized and (for CLADE-ICPE)
given their positional maps once, so that training only reads bytes and crops them, in
TensorFlow ops (`sources.CacheSource` opens one, `pipeline.make_cache_dataset` streams it).

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

This module holds the format (`FORMAT`, `CacheLayout`), `prepare` and `read_manifest`;
it needs neither TensorFlow nor the stream.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np

from clade_tf.data import folders
from clade_tf.data.report import report_once
from clade_tf.outdir import fsync_dir

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
    if os.path.exists(out):
        raise CacheError(f"{out} already exists; prepare into a new folder")
    samples, problems = folders.list_samples(data.dataset, data.dataroot, phase, use_instance)
    if problems and not data.skip_bad_samples:
        raise folders.BadSample(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if not samples:
        raise folders.BadSample(f"{data.dataroot}: no {phase} samples in the {data.dataset} layout")
    palette = folders.load_palette(data.palette) if data.palette else None
    spec = folders.LabelSpec(data.dataset, data.label_nc, data.dontcare_class, palette)
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
                    report_once(f"skipping: {e}")
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
    """The manifest of the prepared cache at `path`; a `CacheError` when there is none or
    it is not this format."""
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
