"""Deterministic stand-in weights for the FID Inception network, written as a `.pth` without torch.

The reference fixture `tests/fixtures/fid_inception/reference.npz` holds pytorch-fid's
features for these same weights (see that folder's README.md), so the Keras network
can be compared with pytorch-fid's without the real weight file. Imports numpy and the
standard library only.
"""

import collections
import pickle
import struct
import zipfile
import zlib

import numpy as np

SEED = 20261204

# the state-dict entries of a BasicConv2d besides its conv weight
BN_ENTRIES = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def fid_weight(key, shape):
    """The stand-in value of state-dict entry `key` (torch shape `shape`), from a seed and the key alone.

    Conv weights are He-normal and every BatchNorm is near identity with some spread, so
    activations keep their scale through the network's depth without calibration.
    """
    rng = np.random.default_rng([SEED, zlib.crc32(key.encode())])
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return np.array(1000, dtype=np.int64)
    if key.endswith("bn.weight"):
        return rng.uniform(0.6, 1.4, shape).astype(np.float32)
    if key.endswith("bn.bias"):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("bn.running_mean"):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("bn.running_var"):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if key == "fc.bias":
        return np.zeros(shape, np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)).astype(np.float32)


def fid_state_dict(conv_shapes, fc=True):
    """The full stand-in state dict in pytorch-fid's key layout.

    `conv_shapes`: {module path (e.g. "Mixed_5b.branch1x1"): torch conv weight shape}.
    """
    sd = collections.OrderedDict()
    for name, shape in conv_shapes.items():
        sd[f"{name}.conv.weight"] = fid_weight(f"{name}.conv.weight", shape)
        for e in BN_ENTRIES:
            sd[f"{name}.{e}"] = fid_weight(f"{name}.{e}", () if e.endswith("tracked") else (shape[0],))
    if fc:
        sd["fc.weight"] = fid_weight("fc.weight", (1008, 2048))
        sd["fc.bias"] = fid_weight("fc.bias", (1008,))
    return sd


# --- torch.save's two formats, written by hand (protocol-2 pickle opcodes) ---------------

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


def _glob(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n):
    return b"J" + struct.pack("<i", n)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


_ODICT = _glob("collections", "OrderedDict") + b")R"


def _state_pickle(state, legacy):
    """`OrderedDict(key -> _rebuild_tensor_v2(PERSID, 0, size, stride, False, OrderedDict()))` with
    storage i holding entry i, as torch writes a state dict of contiguous tensors."""
    body = []
    for i, (key, arr) in enumerate(state.items()):
        pid = [_str("storage"), _glob("torch", _STORAGE[arr.dtype]), _str(str(i)), _str("cpu"), _int(arr.size)]
        if legacy:
            pid.append(b"N")  # no view metadata
        stride = np.cumprod((1,) + arr.shape[:0:-1])[::-1] if arr.ndim else ()
        tensor = (_glob("torch._utils", "_rebuild_tensor_v2") + b"(" + _tuple(pid) + b"Q" + _int(0)
                  + _tuple([_int(n) for n in arr.shape]) + _tuple([_int(int(s)) for s in stride])
                  + b"\x89" + _ODICT + b"tR")
        body.append(_str(key) + tensor)
    return b"\x80\x02" + _ODICT + b"(" + b"".join(body) + b"u."


def write_pth(path, state, legacy=False):
    """`torch.save(state, path)` without torch: the zip format of torch >= 1.6, or with `legacy`
    the format of torch < 1.6 (pytorch-fid's weight file is in that one)."""
    pkl = _state_pickle(state, legacy)
    raw = {str(i): np.ascontiguousarray(v, v.dtype.newbyteorder("<")).tobytes() for i, v in enumerate(state.values())}
    if not legacy:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/byteorder", "little")
            for key, data in raw.items():
                zf.writestr(f"archive/data/{key}", data)
            zf.writestr("archive/version", "3\n")
        return str(path)
    keys = sorted(raw)  # torch sorts the storage keys as strings
    with open(path, "wb") as f:
        for head in (0x1950A86A20F9469CFC6C, 1001,
                     {"protocol_version": 1001, "little_endian": True,
                      "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(head, f, protocol=2)
        f.write(pkl)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            numel = len(raw[key]) // state[list(state)[int(key)]].dtype.itemsize
            f.write(struct.pack("<q", numel) + raw[key])
    return str(path)
