"""Crash-safe training checkpoints.

A checkpoint is a directory `ckpt-<step>` holding the networks' Keras weight
files, both optimizers' variables and the step. It is written under a temporary
name and renamed into place, so after a `kill -9` only complete checkpoints
exist; the newest complete one is what `--resume` (or rerunning the same
command) continues from. The step is also the data position (the pipeline is
a pure function of it).

`tf.train.Checkpoint` is not used: with Keras 3 objects it does not track layers
held in lists (it silently skipped the spectral-norm state and BatchNorm
statistics in our check).
"""

import json
import os
import re
import shutil

import numpy as np

_CKPT = re.compile(r"^ckpt-(\d+)$")


def list_checkpoints(run_dir):
    """`[(step, path)]` of complete checkpoints, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    out = []
    for name in os.listdir(run_dir):
        m = _CKPT.match(name)
        path = os.path.join(run_dir, name)
        if m and os.path.isfile(os.path.join(path, "state.json")):
            out.append((int(m.group(1)), path))
    return sorted(out)


def remove_partial_checkpoints(run_dir):
    """Deletes temporary checkpoint folders a killed process left behind."""
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            if name.startswith(".tmp-ckpt-"):
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def latest_checkpoint(run_dir):
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else (None, None)


def _opt_arrays(opt):
    return {f"{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(opt.variables)}


def save_checkpoint(run_dir, gan, step, keep=3):
    """Writes `ckpt-<step>` atomically and keeps the newest `keep` checkpoints."""
    final = os.path.join(run_dir, f"ckpt-{step}")
    if os.path.isdir(final):
        return final
    tmp = os.path.join(run_dir, f".tmp-ckpt-{step}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    gan.generator.save_weights(os.path.join(tmp, "generator.weights.h5"))
    gan.discriminator.save_weights(os.path.join(tmp, "discriminator.weights.h5"))
    if gan.encoder is not None:
        gan.encoder.save_weights(os.path.join(tmp, "encoder.weights.h5"))
    np.savez(os.path.join(tmp, "g_optimizer.npz"), **_opt_arrays(gan.g_optimizer))
    np.savez(os.path.join(tmp, "d_optimizer.npz"), **_opt_arrays(gan.d_optimizer))
    state = {"step": int(step), "seed_state": gan.seed_generator.state.numpy().tolist()}
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f)
    os.rename(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_opt(opt, path):
    with np.load(path) as data:
        arrays = [data[k] for k in sorted(data.files)]
    if len(arrays) != len(opt.variables):
        raise ValueError(
            f"{path}: {len(arrays)} optimizer variables saved, the optimizer has {len(opt.variables)}"
        )
    for var, value in zip(opt.variables, arrays):
        if tuple(var.shape) != value.shape:
            raise ValueError(f"{path}: shape {value.shape} does not fit {var.path} {tuple(var.shape)}")
        var.assign(value)


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


def atomic_write_text(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
