"""Read PyTorch `torch.save` state dicts without torch, safely, in either serialization.

The zip format (torch >= 1.6) is a zip holding `<name>/data.pkl` (a pickle) and
`<name>/data/<key>` (raw tensor storages). The legacy format that torch < 1.6 wrote,
the format of weight files published before 2020 (pytorch-fid's FID Inception among
them), is five concatenated parts: three small pickles (a magic number, the protocol
version 1001, a dict of platform facts), the state-dict pickle, whose storages are
persistent ids `('storage', type, key, location, numel, view_metadata)`, a pickle of
the sorted storage keys, then for each key an int64 little-endian element count and
the storage's raw bytes. `load_state_dict` tells them apart by their first bytes.

A pickle can run arbitrary code when loaded, so the state-dict pickle of both formats
goes through one unpickler that accepts only the handful of globals a state dict
needs (`collections.OrderedDict`, the tensor-rebuild functions, storage types) and
refuses anything else before it is called; the legacy header and key list may hold
plain data only.

The file is untrusted in its metadata too. Each storage record must hold exactly
the declared number of elements of a supported dtype. Each tensor view is checked
against its storage before anything is copied: size and stride are tuples of ints
>= 0 of equal length (at most `MAX_DIMS`), the storage offset is an int >= 0, and
every element the view addresses lies inside the storage. A view may have more
elements than its storage (a zero-stride broadcast) only up to
`MAX_BROADCAST_ELEMENTS`, and all tensors of one file together at most
`MAX_TOTAL_FACTOR` times the elements of the storages they use plus
`MAX_BROADCAST_ELEMENTS`, so a small file cannot make the reader allocate
without bound. Every refusal is a one-line `CheckpointError` naming the file.
"""

import collections
import io
import lzma
import math
import os
import pickle
import pickletools
import zipfile
import zlib

import numpy as np

MAX_DIMS = 64  # numpy's limit
MAX_BROADCAST_ELEMENTS = 2**24
MAX_TOTAL_FACTOR = 16
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a state dict this reader can (or may) load."""


class _Bad(Exception):
    """A reason to refuse the file; `load_state_dict` prefixes the path."""


def _short(x, n=80):
    try:
        r = " ".join(repr(x).split())
    except (ValueError, RecursionError):  # an int past Python's digit limit, a deeply nested list
        return f"<{type(x).__name__}>"
    return r if len(r) <= n else r[: n - 3] + "..."


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


class _Frozen:
    """Base of every object the pickle can reach besides builtins and OrderedDicts.

    Refuses BUILD: it would otherwise set attributes through the slot-state path,
    e.g. the `__defaults__` of a module-level function, for every later load too.
    """

    __slots__ = ()

    def __setstate__(self, state):
        raise _Bad("the pickle sets the state (BUILD) of a storage, tensor or function, "
                   "which a state dict never does")


class _Call(_Frozen):
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _StorageType(_Frozen):
    __slots__ = ("dtype", "name")

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage(_Frozen):
    __slots__ = ("array", "key", "numel", "type")

    def __init__(self, key, storage_type, numel, array):
        self.key, self.type, self.numel, self.array = key, storage_type, numel, array


class _Tensor(_Frozen):
    """Unchecked view metadata; checked and copied only once its state-dict key is known."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise _Bad(f"a tensor's storage is {_short(storage)}, expected a persistent storage reference")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _Tensor):
        raise _Bad(f"a parameter wraps {_short(data)}, expected a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return _rebuild_parameter(data)


_ALLOWED = {
    ("collections", "OrderedDict"): _Call(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter_with_state),
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})

# Anything the unpickler itself raises on a damaged pickle (the allowed callables raise _Bad).
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
                  AttributeError, OverflowError, RecursionError, MemoryError)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, EOFError, OSError,
               RuntimeError, ValueError)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data, storage_record):
        super().__init__(io.BytesIO(data))
        self._storage_record = storage_record
        self._storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            pass
        what = f"{module}.{name}"
        what = what if what.isprintable() else _short(what)  # keep the error on one readable line
        if module == "torch" and name.endswith("Storage"):
            raise _Bad(f"unsupported storage type {what} (supported: {', '.join(_STORAGE_DTYPES)})")
        raise _Bad(
            f"refusing to load global {what}: a state dict only needs "
            "OrderedDict, tensor rebuild functions and storage types (a checkpoint is a pickle, "
            "and loading other globals could run code)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _Bad(f"unexpected persistent id {_short(pid)}, expected ('storage', type, key, location, numel)")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise _Bad(f"unsupported storage type {_short(storage_type)}")
        if not isinstance(key, str):
            raise _Bad(f"storage key {_short(key)}: expected a str")
        if not _is_int(numel) or numel < 0:
            raise _Bad(f"storage {key!r}: element count {_short(numel)}, expected an int >= 0")
        if key in self._storages:
            st = self._storages[key]
            if st.type is not storage_type or st.numel != numel:
                raise _Bad(f"storage {key!r} is referenced as {st.type.name} of {st.numel} elements "
                           f"and as {storage_type.name} of {_short(numel)}")
            return st
        dtype = storage_type.dtype
        raw = self._storage_record(key, numel * dtype.itemsize, f"{_short(numel)} {storage_type.name} elements")
        if dtype == np.bool_:  # any nonzero byte is True; a numpy bool must be exactly 0 or 1
            arr = np.frombuffer(raw, dtype=np.uint8) != 0
        else:
            arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        st = self._storages[key] = _Storage(key, storage_type, numel, arr)
        return st


class _PlainUnpickler(pickle.Unpickler):
    """For the header and key-list pickles: plain data only, no globals, no persistent ids."""

    def find_class(self, module, name):
        what = f"{module}.{name}"
        what = what if what.isprintable() else _short(what)  # keep the error on one readable line
        raise _Bad(f"the header refers to the global {what}; a legacy checkpoint's header is plain data")

    def persistent_load(self, pid):
        raise _Bad("the header holds a persistent id; a legacy checkpoint's header is plain data")


class _LegacyUnpickler(_RestrictedUnpickler):
    """The zip reader's restricted unpickler, fed the legacy six-element storage ids."""

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _Bad(f"unexpected persistent id {_short(pid)}, expected "
                      "('storage', type, key, location, numel, view_metadata)")
        if pid[5] is not None:  # storage views: only torch < 0.4 wrote them
            raise _Bad(f"storage {_short(pid[2])} is a view of another storage (torch < 0.4), "
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
        raise _Bad(f"malformed {what} pickle ({type(e).__name__}: {_short(str(e), 120)})") from None
    raise _Bad(f"the {what} pickle has no end")


def _plain(data, start, what):
    end = _pickle_end(data, start, what)
    try:
        return _PlainUnpickler(io.BytesIO(data[start:end])).load(), end
    except _PICKLE_ERRORS as e:
        raise _Bad(f"malformed {what} pickle ({type(e).__name__}: {_short(str(e), 120)})") from None


def _unpickle(pkl, storage_record):
    u = _LegacyUnpickler(pkl, storage_record)
    try:
        return u, u.load()
    except _PICKLE_ERRORS as e:
        raise _Bad(f"malformed state-dict pickle ({type(e).__name__}: {_short(str(e), 120)})") from None


def _read_legacy(data):
    pos = 0
    magic, pos = _plain(data, pos, "magic-number")
    if magic != LEGACY_MAGIC:
        raise _Bad(f"magic number {_short(magic)}, expected {LEGACY_MAGIC:#x} (a legacy torch checkpoint)")
    version, pos = _plain(data, pos, "protocol-version")
    if version != LEGACY_PROTOCOL:
        raise _Bad(f"protocol version {_short(version)}, expected {LEGACY_PROTOCOL}")
    info, pos = _plain(data, pos, "platform")
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise _Bad("big-endian (or unmarked) checkpoints are not supported")
    start, pos = pos, _pickle_end(data, pos, "state-dict")
    pkl = data[start:pos]

    # First pass: which storages the state dict uses, and their types and sizes; their
    # bytes follow the key list, so they are read only once these are known.
    u, _ = _unpickle(pkl, lambda key, nbytes, what: b"")
    storages = u._storages
    keys, pos = _plain(data, pos, "storage-key")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _Bad(f"the storage-key list is {_short(keys)}, expected a list of str")
    if sorted(set(keys)) != sorted(storages) or len(keys) != len(storages):
        raise _Bad(f"the storage-key list {_short(keys)} does not match the "
                  f"{len(storages)} storages the state dict uses")
    raw = {}
    for key in keys:
        st = storages[key]
        if pos + 8 > len(data):
            raise _Bad(f"storage {key!r} is missing (the file ends at byte {len(data)})")
        numel = int(np.frombuffer(data, "<i8", 1, pos)[0])
        if numel != st.numel:
            raise _Bad(f"storage {key!r} has {numel} elements, expected {st.numel} ({st.type.name})")
        nbytes = numel * st.type.dtype.itemsize
        if pos + 8 + nbytes > len(data):
            raise _Bad(f"storage {key!r} ({numel} {st.type.name} elements) runs past the end of the file")
        raw[key] = data[pos + 8:pos + 8 + nbytes]
        pos += 8 + nbytes
    if pos != len(data):
        raise _Bad(f"{len(data) - pos} bytes follow the last storage")
    return _unpickle(pkl, lambda key, nbytes, what: raw[key])[1]


def _check_view(key, t):
    """Returns (size, stride, numel, end) of a tensor view, or raises _Bad naming the tensor."""
    st = t.storage
    where = f"tensor {key!r} (storage {st.key!r}, {st.numel} elements)"
    offset, size, stride = t.offset, t.size, t.stride
    if not _is_int(offset) or offset < 0:
        raise _Bad(f"{where}: storage offset {_short(offset)}, expected an int >= 0")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise _Bad(f"{where}: size {_short(size)} and stride {_short(stride)}, expected tuples of ints")
    if len(size) != len(stride) or len(size) > MAX_DIMS:
        raise _Bad(f"{where}: size has {len(size)} dims and stride {len(stride)}, "
                   f"expected equal lengths of at most {MAX_DIMS}")
    for name, dims in (("size", size), ("stride", stride)):
        if not all(_is_int(d) and d >= 0 for d in dims):
            raise _Bad(f"{where}: {name} {_short(tuple(dims))}, expected ints >= 0")
    size, stride = tuple(size), tuple(stride)
    # A zero-size tensor addresses nothing, but its other dims still bound what numpy is asked to shape.
    limit = max(st.numel, MAX_BROADCAST_ELEMENTS)
    if math.prod(max(n, 1) for n in size) > limit:
        raise _Bad(f"{where}: size {_short(size)} has more elements than its storage and than "
                   f"{MAX_BROADCAST_ELEMENTS} (the limit for broadcast views)")
    numel = math.prod(size)
    if numel == 0:
        end = offset
    else:
        end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if end > st.numel:
        raise _Bad(f"{where}: the view (offset {_short(offset)}, size {_short(size)}, stride {_short(stride)}) "
                   f"reaches element {_short(end - 1)}, past the end of its storage")
    return size, stride, numel, end


def _copy_view(t, size, stride, numel, end):
    arr = t.storage.array
    if numel == 0:
        return np.zeros(size, dtype=arr.dtype)
    base = arr[t.offset:end]  # exactly the addressed range, so the strided view stays inside it
    item = arr.itemsize
    strides = tuple(s * item if n > 1 else 0 for n, s in zip(size, stride))
    view = np.lib.stride_tricks.as_strided(base, shape=size, strides=strides, writeable=False)
    return np.array(view)  # own, contiguous copy


def _read_zip(path):
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise _Bad(f"expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in infos and zf.read(order).strip() != b"little":
            raise _Bad("big-endian checkpoints are not supported")

        def storage_record(key, nbytes, what):
            member = f"{prefix}data/{key}"
            if member not in infos:
                raise _Bad(f"missing storage {member}")
            # Checked before reading, so a wrong declared count cannot make us read (or inflate) a huge record.
            if infos[member].file_size != nbytes:
                raise _Bad(f"storage {member} has {infos[member].file_size} bytes, expected {_short(nbytes)} ({what})")
            try:
                raw = zf.read(member)
            except _ZIP_ERRORS as e:
                raise _Bad(f"damaged zip archive ({type(e).__name__}: {_short(str(e), 120)})") from None
            if len(raw) != nbytes:
                raise _Bad(f"storage {member} has {len(raw)} bytes, expected {nbytes} ({what})")
            return raw

        data = zf.read(pkl[0])
        try:
            return _RestrictedUnpickler(data, storage_record).load()
        except _PICKLE_ERRORS as e:
            raise _Bad(f"malformed data.pkl ({type(e).__name__}: {_short(str(e), 120)})") from None


def _state_dict(obj):
    """The `{name: numpy array}` of an unpickled state dict, after checking every entry and view."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _Bad(f"expected a state dict, found {type(obj).__name__}")
    checked, total, storages = [], 0, {}
    for k, v in dict.items(obj):  # dict.items: a BUILD may have set an attribute named `items`
        if not isinstance(k, str):
            raise _Bad(f"entry key {_short(k)} is not a str")
        if not isinstance(v, _Tensor):
            raise _Bad(f"entry {k!r} is not a tensor")
        view = _check_view(k, v)
        total += view[2]
        storages[v.storage.key] = v.storage.numel
        checked.append((k, v, view))
    # Views of one storage repeated many times could otherwise multiply a small file's size.
    budget = MAX_TOTAL_FACTOR * sum(storages.values()) + MAX_BROADCAST_ELEMENTS
    if total > budget:
        raise _Bad(f"the tensors have {total} elements in all, more than {MAX_TOTAL_FACTOR} times their "
                   f"storages' {sum(storages.values())} plus {MAX_BROADCAST_ELEMENTS}")
    out = {}
    for k, v, view in checked:
        name = k.removeprefix("module.")  # DataParallel prefix
        if name in out:
            raise _Bad(f"entry {k!r} and another entry both give the name {name!r}")
        out[name] = _copy_view(v, *view)
    return out


def load_state_dict(path):
    """Reads a `torch.save`d state dict, zip or legacy format, into `{name: numpy array}`.

    Raises `FileNotFoundError` for a missing file and `CheckpointError` (a `ValueError`)
    for anything else that is not a readable state dict: pickles that reference anything
    but what a state dict needs, malformed archives, storages or tensor views (see the
    module docstring for the checks and limits).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; expected a torch checkpoint file (.pth)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(1)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head != b"\x80":  # every legacy file starts with a pickle's PROTO opcode
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive with data.pkl, "
                              "torch >= 1.6, nor a legacy pickle, torch < 1.6)")
    try:
        if is_zip:
            try:
                obj = _read_zip(path)
            except _ZIP_ERRORS as e:
                raise _Bad(f"damaged zip archive ({type(e).__name__}: {_short(str(e), 120)})") from None
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f.read())
        return _state_dict(obj)
    except _Bad as e:
        raise CheckpointError(f"{path}: {e}") from None
