"""Read PyTorch `torch.save` state dicts (zip format) without torch, safely.

A checkpoint is a zip holding `<name>/data.pkl` (a pickle) and `<name>/data/<key>`
(raw tensor storages). A pickle can run arbitrary code when loaded, so the
unpickler here accepts only the handful of globals a state dict needs
(`collections.OrderedDict`, the tensor-rebuild functions, storage types) and
refuses anything else before it is called.
"""

import collections
import io
import pickle
import zipfile

import numpy as np

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


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, array):
        self.array = array  # 1-D numpy array over the whole storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    arr = storage.array
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(arr[storage_offset])
    needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if any(n == 0 for n in size):
        return np.zeros(size, dtype=arr.dtype)
    if needed > arr.size:
        raise CheckpointError("a tensor view reaches past the end of its storage")
    item = arr.itemsize
    view = np.lib.stride_tricks.as_strided(
        arr[storage_offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)  # own, contiguous copy


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data, load_storage, path):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._path = path
        self._storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._path}: refusing to load global {module}.{name}: a state dict only needs "
                "OrderedDict, tensor rebuild functions and storage types (a checkpoint is a pickle, "
                "and loading other globals could run code)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            raw = self._load_storage(key)
            arr = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
            if arr.size < numel:
                raise CheckpointError(f"{self._path}: storage {key} holds {arr.size} elements, expected {numel}")
            self._storages[key] = _Storage(arr.astype(storage_type.dtype, copy=False))
        return self._storages[key]


def load_state_dict(path):
    """Reads a `torch.save`d state dict (zip format) into `{name: numpy array}`.

    Raises `CheckpointError` (a `ValueError`) for the legacy non-zip format, for
    pickles that reference anything but what a state dict needs, and for
    malformed archives; `FileNotFoundError` for a missing file.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80" and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: legacy (pre-1.6, non-zip) torch checkpoint; re-save it with a current torch: "
            "torch.save(torch.load(path), new_path)"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch checkpoint (expected a zip archive with data.pkl)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).decode().strip() != "little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")

        def load_storage(key):
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: missing storage {member}")
            return zf.read(member)

        obj = _RestrictedUnpickler(zf.read(pkl[0]), load_storage, path).load()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor")
        out[k[7:] if k.startswith("module.") else k] = v  # DataParallel prefix
    return out
