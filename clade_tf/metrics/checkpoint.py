"""Reads a torch state dict in either serialization: the zip format (torch >= 1.6) through
`clade_tf.torch_checkpoint`, and the legacy format that torch < 1.6 wrote, which is the
format of weight files published before 2020 (pytorch-fid's FID Inception among them).

A legacy file is five concatenated parts: three small pickles (a magic number, the
protocol version 1001, a dict of platform facts), the state-dict pickle, whose storages
are persistent ids `('storage', type, key, location, numel, view_metadata)`, a pickle of
the sorted storage keys, then for each key an int64 little-endian element count and
the storage's raw bytes. The state-dict pickle goes through the same restricted
unpickler and the same view checks as a zip checkpoint, so a legacy file can run no
code and address nothing outside its storages either. Every refusal is a one-line
`CheckpointError` naming the file.
"""

import io
import pickle
import pickletools
import zipfile

import numpy as np

from clade_tf import torch_checkpoint as tc
from clade_tf.torch_checkpoint import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _PlainUnpickler(pickle.Unpickler):
    """For the header and key-list pickles: plain data only, no globals, no persistent ids."""

    def find_class(self, module, name):
        what = f"{module}.{name}"
        what = what if what.isprintable() else tc._short(what)  # keep the error on one readable line
        raise tc._Bad(f"the header refers to the global {what}; a legacy checkpoint's header is plain data")

    def persistent_load(self, pid):
        raise tc._Bad("the header holds a persistent id; a legacy checkpoint's header is plain data")


class _LegacyUnpickler(tc._RestrictedUnpickler):
    """The zip reader's restricted unpickler, fed the legacy six-element storage ids."""

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise tc._Bad(f"unexpected persistent id {tc._short(pid)}, expected "
                          "('storage', type, key, location, numel, view_metadata)")
        if pid[5] is not None:  # storage views: only torch < 0.4 wrote them
            raise tc._Bad(f"storage {tc._short(pid[2])} is a view of another storage (torch < 0.4), "
                          "which is not supported")
        return super().persistent_load(pid[:5])


def _pickle_end(data, start, what):
    """Where the pickle starting at `start` ends, found by reading its opcodes, not running them."""
    buf = io.BytesIO(data)  # shares the bytes; genops reports positions from buf.tell()
    buf.seek(start)
    try:
        for op, _, pos in pickletools.genops(buf):
            if op.name == "STOP":
                return pos + 1
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise tc._Bad(f"malformed {what} pickle ({type(e).__name__}: {tc._short(str(e), 120)})") from None
    raise tc._Bad(f"the {what} pickle has no end")


def _plain(data, start, what):
    end = _pickle_end(data, start, what)
    try:
        return _PlainUnpickler(io.BytesIO(data[start:end])).load(), end
    except tc._PICKLE_ERRORS as e:
        raise tc._Bad(f"malformed {what} pickle ({type(e).__name__}: {tc._short(str(e), 120)})") from None


def _unpickle(pkl, storage_record):
    u = _LegacyUnpickler(pkl, storage_record)
    try:
        return u, u.load()
    except tc._PICKLE_ERRORS as e:
        raise tc._Bad(f"malformed state-dict pickle ({type(e).__name__}: {tc._short(str(e), 120)})") from None


def _read_legacy(data):
    pos = 0
    magic, pos = _plain(data, pos, "magic-number")
    if magic != LEGACY_MAGIC:
        raise tc._Bad(f"magic number {tc._short(magic)}, expected {LEGACY_MAGIC:#x} (a legacy torch checkpoint)")
    version, pos = _plain(data, pos, "protocol-version")
    if version != LEGACY_PROTOCOL:
        raise tc._Bad(f"protocol version {tc._short(version)}, expected {LEGACY_PROTOCOL}")
    info, pos = _plain(data, pos, "platform")
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise tc._Bad("big-endian (or unmarked) checkpoints are not supported")
    start, pos = pos, _pickle_end(data, pos, "state-dict")
    pkl = data[start:pos]

    # First pass: which storages the state dict uses, and their types and sizes; their
    # bytes follow the key list, so they are read only once these are known.
    u, _ = _unpickle(pkl, lambda key, nbytes, what: b"")
    storages = u._storages
    keys, pos = _plain(data, pos, "storage-key")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise tc._Bad(f"the storage-key list is {tc._short(keys)}, expected a list of str")
    if sorted(set(keys)) != sorted(storages) or len(keys) != len(storages):
        raise tc._Bad(f"the storage-key list {tc._short(keys)} does not match the "
                      f"{len(storages)} storages the state dict uses")
    raw = {}
    for key in keys:
        st = storages[key]
        if pos + 8 > len(data):
            raise tc._Bad(f"storage {key!r} is missing (the file ends at byte {len(data)})")
        numel = int(np.frombuffer(data, "<i8", 1, pos)[0])
        if numel != st.numel:
            raise tc._Bad(f"storage {key!r} has {numel} elements, expected {st.numel} ({st.type.name})")
        nbytes = numel * st.type.dtype.itemsize
        if pos + 8 + nbytes > len(data):
            raise tc._Bad(f"storage {key!r} ({numel} {st.type.name} elements) runs past the end of the file")
        raw[key] = data[pos + 8:pos + 8 + nbytes]
        pos += 8 + nbytes
    if pos != len(data):
        raise tc._Bad(f"{len(data) - pos} bytes follow the last storage")
    return _unpickle(pkl, lambda key, nbytes, what: raw[key])[1]


def _state_dict(obj):
    """The checks and copies `torch_checkpoint.load_state_dict` makes after unpickling."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise tc._Bad(f"expected a state dict, found {type(obj).__name__}")
    checked, total, storages = [], 0, {}
    for k, v in dict.items(obj):  # dict.items: a BUILD may have set an attribute named `items`
        if not isinstance(k, str):
            raise tc._Bad(f"entry key {tc._short(k)} is not a str")
        if not isinstance(v, tc._Tensor):
            raise tc._Bad(f"entry {k!r} is not a tensor")
        view = tc._check_view(k, v)
        total += view[2]
        storages[v.storage.key] = v.storage.numel
        checked.append((k, v, view))
    budget = tc.MAX_TOTAL_FACTOR * sum(storages.values()) + tc.MAX_BROADCAST_ELEMENTS
    if total > budget:
        raise tc._Bad(f"the tensors have {total} elements in all, more than {tc.MAX_TOTAL_FACTOR} times their "
                      f"storages' {sum(storages.values())} plus {tc.MAX_BROADCAST_ELEMENTS}")
    out = {}
    for k, v, view in checked:
        name = k.removeprefix("module.")
        if name in out:
            raise tc._Bad(f"entry {k!r} and another entry both give the name {name!r}")
        out[name] = tc._copy_view(v, *view)
    return out


def load_legacy_state_dict(path):
    """Reads a legacy (torch < 1.6, non-zip) `torch.save`d state dict into `{name: numpy array}`."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _state_dict(_read_legacy(data))
    except tc._Bad as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_state_dict(path):
    """A `torch.save`d state dict in the zip or the legacy format, as `{name: numpy array}`.

    Raises `FileNotFoundError` for a missing file and `CheckpointError` (a `ValueError`)
    for anything that is not a readable state dict.
    """
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" and not zipfile.is_zipfile(path):  # a pickle, not a zip archive
        return load_legacy_state_dict(path)
    return tc.load_state_dict(path)
