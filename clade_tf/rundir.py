"""The run directory: the one owner of its layout (write, list, load).

    <run>/config.json            the `RunConfig` (+ `source` for imported checkpoints)
    <run>/ckpt-<step>/           generator / discriminator (/ encoder) .weights.h5,
                                 g_optimizer.npz, d_optimizer.npz, state.json
    <run>/generator.keras        the final generator (a `keras.models.load_model` file)
    <run>/generator.weights.h5   an imported generator (no checkpoints)
    <run>/logs/, samples/        TensorBoard logs and sample grids

Training, export, import and evaluation all go through `RunDirectory`.

Checkpoints are written under a temporary name, flushed to disk (fsync) and renamed
into place, so after a `kill -9` or a power cut only complete checkpoints exist. Each
holds a `manifest.json` with the size and SHA-256 of its files; a checkpoint is checked
against it when it is read, and a damaged one is skipped (with a warning naming it) for
the newest intact one. Before writing, the space a checkpoint needs is reserved, so a
full disk stops the run with a one-line error instead of a half-written file. The step is also the data position (the pipeline is a pure
function of it). `tf.train.Checkpoint` is not used: with Keras 3 objects it does not
track layers held in lists (it silently skipped the spectral-norm state and BatchNorm
statistics in our check).
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import sys

import numpy as np

from clade_tf.config import ConfigError, RunConfig
from clade_tf.networks import Generator
from clade_tf.outdir import fsync_dir, fsync_file, fsync_tree, sha256

_CKPT = re.compile(r"^ckpt-(\d+)$")
CONFIG = "config.json"
GENERATOR_KERAS = "generator.keras"
GENERATOR_WEIGHTS = "generator.weights.h5"
MANIFEST = "manifest.json"
LOCK = ".lock"
DAMAGED_PREFIX = "damaged-"


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, or does not fit the model."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, not writable); nothing was rotated out."""


class RunLockedError(RuntimeError):
    """The run directory is being written by another process."""


def atomic_write_text(path, text):
    """Writes `path` so that it is either the old or the new text, also after a power cut."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_manifest(folder):
    """`manifest.json`: size and SHA-256 of every file in `folder`."""
    files = {n: {"bytes": os.path.getsize(os.path.join(folder, n)), "sha256": sha256(os.path.join(folder, n))}
             for n in sorted(os.listdir(folder)) if n != MANIFEST}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"files": files}, f, indent=1)


def verify_checkpoint(path):
    """None if the checkpoint at `path` is intact, else what is wrong with it (one line).

    Checkpoints with a manifest are checked file by file (size, SHA-256); older ones
    without one only for their files being present and non-empty."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        needed = ("generator.weights.h5", "discriminator.weights.h5", "g_optimizer.npz", "d_optimizer.npz",
                  "state.json")
        for name in needed:
            f = os.path.join(path, name)
            if not os.path.isfile(f) or os.path.getsize(f) == 0:
                return f"{name} is missing or empty"
        return None
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name, meta in files.items():
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            return f"{name} is missing"
        if os.path.getsize(f) != meta["bytes"]:
            return f"{name} has {os.path.getsize(f)} bytes, the manifest says {meta['bytes']}"
        if sha256(f) != meta["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def rundir_verify_best(path):
    """None if `best/` is intact (its manifest), else what is wrong."""
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        return f"{MANIFEST} is missing"
    return verify_checkpoint(path)


def _reserve_space(folder, nbytes):
    """Makes sure `nbytes` can be written in `folder` before anything is: h5py fails
    badly on a full disk (a traceback per object, then a crash at exit)."""
    probe = os.path.join(folder, ".space-reservation")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(int(nbytes), 1))
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)


def load_weights_checked(model, path, architecture):
    """Loads a Keras weights file into the built `model`, with one-line errors.

    `architecture` describes what the weights should fit (for the message). Besides
    Keras' own checks (missing or differently shaped variables), a `.weights.h5`
    holding more arrays than the model has (e.g. BatchNorm statistics loaded into an
    `instance` param-free norm, which Keras skips silently) is a mismatch too.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as e:
        text = str(e).strip()
        if isinstance(e, OSError) or "File format not supported" in text:
            raise WeightsError(f"{path}: not a Keras weights file (.weights.h5): {text.splitlines()[0]}") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(e).__name__]
        example = next((ln for ln in lines[1:] if " expected " in ln), None)
        detail = f"{lines[0].split(' Example')[0].rstrip('.')}; e.g. {example}" if example else lines[0]
        raise WeightsError(f"{path} does not match {architecture}: {detail}") from None
    import h5py

    if h5py.is_hdf5(path):
        arrays = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, v: arrays.append(1) if isinstance(v, h5py.Dataset) else None)
        if len(arrays) > len(model.weights):
            raise WeightsError(f"{path} does not match {architecture}: the file holds {len(arrays)} weight "
                               f"arrays, the model has {len(model.weights)}")


def _opt_key(var):
    """A checkpoint key of an optimizer variable that does not depend on how many optimizers
    the process built before (`adam_4/generator_fc_kernel_momentum` -> `adam|generator_fc_...`)."""
    owner, _, name = var.path.partition("/")
    return f"{re.sub(r'_[0-9]+$', '', owner)}|{name}"


def _is_learning_rate(key):
    # the rate comes from the run configuration (a changed --g-lr, a new --decay-start), not the file
    return key.endswith("|learning_rate")


def _opt_arrays(opt):
    return {_opt_key(v): np.asarray(v.numpy()) for v in opt.variables}


def _load_opt(opt, path):
    with np.load(path) as data:
        saved = {k: data[k] for k in data.files}
    if saved and all(k.isdigit() for k in saved):  # checkpoints that stored the variables by index
        arrays = [saved[k] for k in sorted(saved)]
        if len(arrays) != len(opt.variables):
            raise ValueError(f"{path}: {len(arrays)} optimizer variables saved, the optimizer has "
                             f"{len(opt.variables)}")
        pairs = list(zip(opt.variables, arrays))
    else:
        wanted = {_opt_key(v): v for v in opt.variables if not _is_learning_rate(_opt_key(v))}
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(k for k in set(saved) - set(wanted) if not _is_learning_rate(k))
        if missing or extra:
            raise ValueError(f"{path} does not fit the optimizer: "
                             + "; ".join(f"{len(x)} {what} (e.g. {x[0]})"
                                         for what, x in (("missing", missing), ("unexpected", extra)) if x))
        pairs = [(v, saved[k]) for k, v in wanted.items()]
    for var, value in pairs:
        if tuple(var.shape) != value.shape:
            raise ValueError(f"{path}: shape {value.shape} does not fit {var.path} {tuple(var.shape)}")
        var.assign(value)


def _checkpoint_bytes(gan, previous):
    """The space the next checkpoint needs: the previous one's size, or the arrays' size."""
    if previous and os.path.isdir(previous):
        size = sum(os.path.getsize(os.path.join(previous, n)) for n in os.listdir(previous))
    else:
        models = [m for m in (gan.generator, gan.discriminator, gan.encoder) if m is not None]
        variables = [v for m in models for v in m.weights] + list(gan.g_optimizer.variables) + list(
            gan.d_optimizer.variables)
        size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    return size * 1.05 + (1 << 20)  # h5 / npz headers, the manifest


class RunDirectory:
    """A run directory of `python -m train` (or of an imported checkpoint)."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunDirectory({self.path!r})"

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    # -- config ------------------------------------------------------------------------
    @property
    def config_path(self):
        return self.file(CONFIG)

    def has_config(self):
        return os.path.isfile(self.config_path)

    def read_record(self):
        """`config.json` as a dict (with `source` for imported checkpoints)."""
        if not self.has_config():
            # name what is wrong with the path itself first: a typo is not "a run without config.json"
            what = ("not found" if not os.path.exists(self.path) else
                    "is a file, not a run directory" if not os.path.isdir(self.path) else f"no {CONFIG}")
            raise ConfigError(f"{self.path}: {what} (expected a run directory of python -m train "
                              "or export.from_torch)")
        try:
            with open(self.config_path) as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.config_path}: not valid JSON ({e})") from None

    def read_config(self) -> RunConfig:
        record = self.read_record()
        record.pop("source", None)  # where an imported checkpoint came from
        try:
            return RunConfig.from_dict(record)
        except (ConfigError, TypeError, KeyError) as e:
            raise ConfigError(f"{self.config_path}: {e}") from None

    def is_imported(self):
        """An imported checkpoint (no training record of its own)."""
        return "source" in self.read_record()

    def write_config(self, cfg: RunConfig, **extra):
        os.makedirs(self.path, exist_ok=True)
        atomic_write_text(self.config_path, json.dumps({**cfg.to_dict(), **extra}, indent=2))

    @contextlib.contextmanager
    def lock(self):
        """Holds an exclusive lock on the run directory while a trainer writes it. The
        kernel releases it when the process ends, however it ends (`kill -9` too)."""
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path} is being written by another training process (pid {holder}); "
                                 "wait for it to end or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield self
        finally:
            os.close(fd)

    # -- checkpoints -------------------------------------------------------------------
    def checkpoints(self):
        """`[(step, path)]` of complete checkpoints, oldest first."""
        if not os.path.isdir(self.path):
            return []
        out = []
        for name in os.listdir(self.path):
            m = _CKPT.match(name)
            path = self.file(name)
            if m and os.path.isfile(os.path.join(path, "state.json")):
                out.append((int(m.group(1)), path))
        return sorted(out)

    def latest_checkpoint(self):
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else (None, None)

    def intact_checkpoints(self, set_aside=False):
        """`[(step, path)]` of checkpoints that pass `verify_checkpoint`, newest first.

        Damaged ones are named in a warning; with `set_aside` (the training chief) they are
        renamed to `damaged-ckpt-<step>` (kept for inspection, never deleted) so that the
        resumed run can write that step again."""
        out = []
        for step, path in reversed(self.checkpoints()):
            problem = verify_checkpoint(path)
            if problem is None:
                out.append((step, path))
                continue
            moved = ""
            if set_aside:
                target = self.file(f"{DAMAGED_PREFIX}ckpt-{step}")
                n = 1
                while os.path.exists(target):
                    n += 1
                    target = self.file(f"{DAMAGED_PREFIX}ckpt-{step}-{n}")
                os.rename(path, target)
                moved = f", moved to {target}"
            warn(f"{path} is damaged ({problem}){moved}; it is not used")
        return out

    def remove_partial_checkpoints(self):
        """Deletes temporary checkpoint folders a killed process left behind (and puts back
        a best checkpoint whose replacement was cut short)."""
        if os.path.isdir(self.path):
            for name in sorted(os.listdir(self.path)):
                if name.startswith((".tmp-ckpt-", ".tmp-best-")):
                    shutil.rmtree(self.file(name), ignore_errors=True)
                elif name.startswith(".old-best-"):
                    if os.path.isdir(self.file(self.BEST)):
                        shutil.rmtree(self.file(name), ignore_errors=True)
                    else:
                        os.rename(self.file(name), self.file(self.BEST))

    def save_checkpoint(self, gan, step, keep=3):
        """Writes `ckpt-<step>` of a `CladeGAN` atomically; keeps the newest `keep`.

        Refuses (`NonFiniteError`, nothing written, nothing rotated out) when a weight
        holds NaN or Inf: a diverged run must not replace its last good checkpoints.
        Raises `CheckpointWriteError` (the temporary folder removed, nothing rotated out)
        when the checkpoint cannot be written, e.g. on a full disk."""
        from clade_tf.gan import NonFiniteError, non_finite_weights

        final = self.file(f"ckpt-{step}")
        if os.path.isdir(final):
            return final
        good = self.latest_checkpoint()[1]
        bad = non_finite_weights(gan.generator, gan.discriminator, gan.encoder)
        if bad:
            raise NonFiniteError(f"step {step}: {len(bad)} weights hold NaN/Inf (e.g. {bad[0]}); checkpoint "
                                 f"not written, {good or 'no earlier checkpoint'} kept")
        tmp = self.file(f".tmp-ckpt-{step}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(tmp)
            _reserve_space(tmp, _checkpoint_bytes(gan, good))
            gan.generator.save_weights(os.path.join(tmp, "generator.weights.h5"))
            gan.discriminator.save_weights(os.path.join(tmp, "discriminator.weights.h5"))
            if gan.encoder is not None:
                gan.encoder.save_weights(os.path.join(tmp, "encoder.weights.h5"))
            np.savez(os.path.join(tmp, "g_optimizer.npz"), **_opt_arrays(gan.g_optimizer))
            np.savez(os.path.join(tmp, "d_optimizer.npz"), **_opt_arrays(gan.d_optimizer))
            state = {"step": int(step), "seed_state": gan.seed_generator.state.numpy().tolist()}
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f)
            write_manifest(tmp)
            fsync_tree(tmp)
            os.rename(tmp, final)
            fsync_dir(self.path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = os.strerror(e.errno) if e.errno else str(e).splitlines()[0]
            raise CheckpointWriteError(e.errno or errno.EIO, f"step {step}: cannot write the checkpoint in "
                                       f"{self.path} ({reason}); {good or 'no earlier checkpoint'} kept") from None
        for _, old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def restore_checkpoint(path, gan):
        """Loads a checkpoint into a built `CladeGAN` (networks and optimizers); returns the step."""
        gan.generator.load_weights(os.path.join(path, "generator.weights.h5"))
        gan.discriminator.load_weights(os.path.join(path, "discriminator.weights.h5"))
        if gan.encoder is not None:
            gan.encoder.load_weights(os.path.join(path, "encoder.weights.h5"))
        _load_opt(gan.g_optimizer, os.path.join(path, "g_optimizer.npz"))
        _load_opt(gan.d_optimizer, os.path.join(path, "d_optimizer.npz"))
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
        gan.seed_generator.state.assign(np.asarray(state["seed_state"], dtype=gan.seed_generator.state.dtype))
        return int(state["step"])

    # -- the best checkpoint by FID (training with --eval-every) --------------------------
    BEST = "best"

    def best_score(self):
        """The `score.json` of `best/` (`{"step", "fid", ...}`), or None."""
        path = self.file(self.BEST, "score.json")
        if not os.path.isfile(path) or rundir_verify_best(self.file(self.BEST)):
            return None
        with open(path) as f:
            return json.load(f)

    def save_best(self, generator, step, metrics):
        """Replaces `best/` with this generator (weights, `score.json`, manifest), atomically:
        a crash leaves either the old best or the new one, never a mix."""
        tmp = self.file(f".tmp-best-{os.getpid()}")
        old = self.file(f".old-best-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(tmp)
            generator.save_weights(os.path.join(tmp, "generator.weights.h5"))
            with open(os.path.join(tmp, "score.json"), "w") as f:
                json.dump({"step": int(step), **metrics}, f, indent=1)
            write_manifest(tmp)
            fsync_tree(tmp)
            best = self.file(self.BEST)
            if os.path.isdir(best):
                os.rename(best, old)
            os.rename(tmp, best)
            fsync_dir(self.path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.isdir(old) and not os.path.isdir(self.file(self.BEST)):
                os.rename(old, self.file(self.BEST))
            raise CheckpointWriteError(e.errno or errno.EIO, f"step {step}: cannot write {self.file(self.BEST)} "
                                       f"({os.strerror(e.errno) if e.errno else e})") from None
        shutil.rmtree(old, ignore_errors=True)
        return self.file(self.BEST)

    # -- the generator -----------------------------------------------------------------
    def generator_weights(self, step=None):
        """The generator weights file: the newest intact checkpoint's (or checkpoint
        `step`'s), else an imported `generator.weights.h5`. A damaged newest checkpoint is
        skipped with a warning that says which one is used instead."""
        ckpts = dict(self.checkpoints())
        if step is not None:
            if step not in ckpts:
                raise WeightsError(f"{self.path}: no checkpoint ckpt-{step} (have: "
                                   f"{', '.join(str(s) for s in ckpts) or 'none'})")
            problem = verify_checkpoint(ckpts[step])
            if problem:
                raise WeightsError(f"{ckpts[step]} is damaged ({problem})")
            return os.path.join(ckpts[step], "generator.weights.h5")
        if ckpts:
            intact = self.intact_checkpoints()
            if not intact:
                raise WeightsError(f"{self.path}: every checkpoint is damaged (see the warnings above)")
            if intact[0][0] != max(ckpts):
                warn(f"using {intact[0][1]} instead")
            return os.path.join(intact[0][1], "generator.weights.h5")
        if os.path.isfile(self.file(GENERATOR_WEIGHTS)):
            return self.file(GENERATOR_WEIGHTS)
        raise WeightsError(f"{self.path}: no generator weights (ckpt-*/generator.weights.h5 or "
                           f"{GENERATOR_WEIGHTS})")

    def load_generator(self, step=None):
        """`(Generator, RunConfig)`: a float32 generator built from `config.json` with the
        newest (or `step`'s) weights."""
        cfg = self.read_config()
        g = Generator(cfg.generator, name="generator")
        g.build()
        load_weights_checked(g, self.generator_weights(step), f"the generator of {self.config_path}")
        return g, cfg

    def save_generator(self, generator):
        """Writes `generator.keras` atomically."""
        path = self.file(GENERATOR_KERAS)
        tmp = path + ".tmp.keras"
        try:
            generator.save(tmp)
            fsync_file(tmp)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        fsync_dir(self.path)
        return path

    def write_imported(self, cfg: RunConfig, generator, encoder, source, force=False):
        """Writes an imported generator (+ encoder) as a run directory, atomically; `force`
        replaces an earlier imported run only (`clade_tf.outdir`)."""
        from clade_tf.outdir import replace_directory

        inputs = [p for p in (source or {}).values() if isinstance(p, str)]
        with replace_directory(self.path, "imported run", force, inputs) as tmp_path:
            tmp = RunDirectory(tmp_path)
            tmp.write_config(cfg, source=source)
            generator.save_weights(tmp.file(GENERATOR_WEIGHTS))
            tmp.save_generator(generator)
            if encoder is not None:
                encoder.save_weights(tmp.file("encoder.weights.h5"))
