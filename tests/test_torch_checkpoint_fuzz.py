"""The torch checkpoint reader on crafted and fuzzed files: refuse (CheckpointError) or read inside the storage.

Checkpoints are written by hand here (zip + protocol-2 pickle in torch's layout, see
tests/fixtures/README.md), so no torch is needed.
"""

import io
import pickletools
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clade_tf.torchio import reader as tc
from clade_tf.torchio.reader import CheckpointError, load_state_dict

ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "LongStorage": 8, "IntStorage": 4,
            "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}
DTYPE = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
         "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
         "ByteStorage": np.uint8, "BoolStorage": np.bool_}


# --- a minimal pickle writer for state dicts -------------------------------------------------


class Raw(bytes):
    """Pickle opcodes written as they are."""


def enc(v):
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"N"
    if v is True:
        return b"\x88"
    if v is False:
        return b"\x89"
    if isinstance(v, int):
        if 0 <= v < 256:
            return b"K" + bytes([v])
        b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(b)]) + b if len(b) < 256 else b"\x8b" + struct.pack("<I", len(b)) + b  # LONG1/4
    if isinstance(v, float):
        return b"G" + struct.pack(">d", v)
    if isinstance(v, str):
        s = v.encode()
        return b"X" + struct.pack("<I", len(s)) + s
    if isinstance(v, tuple):
        return b"(" + b"".join(map(enc, v)) + b"t"
    if isinstance(v, list):
        return b"](" + b"".join(map(enc, v)) + b"e"
    raise TypeError(v)


def glob(module, name):
    return Raw(b"c" + f"{module}\n{name}\n".encode())


ODICT = Raw(glob("collections", "OrderedDict") + b")R")


def tensor(stype, skey, numel, offset, size, stride, param=False):
    """Opcodes of `_rebuild_tensor_v2(PERSID, offset, size, stride, False, OrderedDict())` as torch writes them."""
    pid = b"(" + enc("storage") + glob("torch", stype) + enc(skey) + enc("cpu") + enc(numel) + b"tQ"
    t = glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + enc(offset) + enc(size) + enc(stride) + b"\x89" \
        + ODICT + b"tR"
    if param:
        t = glob("torch._utils", "_rebuild_parameter") + b"(" + t + b"\x88" + ODICT + b"tR"
    return Raw(t)


def state_dict_pickle(entries):
    """entries: [(key, opcodes)] -> a protocol-2 pickle of an OrderedDict."""
    return b"\x80\x02" + ODICT + b"(" + b"".join(enc(k) + enc(v) for k, v in entries) + b"u."


def write_pth(path, pkl, records, prefix="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, data in records.items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
    return str(path)


def one_tensor(tmp_path, offset, size, stride, stype="FloatStorage", numel=4096, record=None):
    data = np.arange(numel, dtype=DTYPE[stype]).tobytes() if record is None else record
    pkl = state_dict_pickle([("w", tensor(stype, "0", numel, offset, size, stride))])
    return write_pth(tmp_path / "crafted.pth", pkl, {"0": data})


def test_hand_written_checkpoint_reads_like_torch_fixture(tmp_path):
    # the writer above reproduces torch's layout: same values as the torch-written fixture's view
    base = np.arange(24, dtype=np.float32)
    pkl = state_dict_pickle([("c.base", tensor("FloatStorage", "2", 24, 0, (4, 6), (6, 1))),
                             ("c.view", tensor("FloatStorage", "2", 24, 6, (3, 3), (6, 2), param=True)),
                             ("s", tensor("LongStorage", "3", 1, 0, (), ())),
                             ("e", tensor("FloatStorage", "2", 24, 24, (0, 5), (5, 1))),
                             ("b", tensor("FloatStorage", "2", 24, 3, (2, 3), (0, 1)))])
    sd = load_state_dict(write_pth(tmp_path / "x.pth", pkl, {"2": base.tobytes(), "3": np.int64(7).tobytes()}))
    np.testing.assert_array_equal(sd["c.view"], base.reshape(4, 6)[1:, ::2])
    assert sd["s"].shape == () and sd["s"] == 7 and sd["e"].shape == (0, 5)
    np.testing.assert_array_equal(sd["b"], [[3, 4, 5], [3, 4, 5]])  # a zero-stride (broadcast) view


# --- crafted views from the hardening issue: each read outside the storage before -------------


@pytest.mark.parametrize(
    "offset,size,stride,message",
    [
        # segfaulted: 4096 rows 16 KiB apart, all before the buffer
        (0, (4096,), (-4096,), r"stride \(-4096,\), expected ints >= 0"),
        # returned heap garbage
        (-2, (2,), (1,), r"storage offset -2, expected an int >= 0"),
        (0, (3,), (-2,), r"stride \(-2,\), expected ints >= 0"),
        # a negative stride hid that row 1 starts past the end (the old extent sum came out in range)
        (0, (2, 2), (4096, -1), r"stride \(4096, -1\), expected ints >= 0"),
    ],
    ids=["stride-4096", "offset-2", "stride-2", "negative-stride-hides-past-end"],
)
def test_negative_strides_and_offsets_are_refused(tmp_path, offset, size, stride, message):
    with pytest.raises(CheckpointError, match=r"crafted\.pth: tensor 'w' \(storage '0', 4096 elements\): " + message):
        load_state_dict(one_tensor(tmp_path, offset, size, stride))


def test_huge_zero_stride_view_is_refused_before_allocating(tmp_path):
    # 200000 x 200000 float32 is 149 GiB from one stored element
    with pytest.raises(CheckpointError, match=r"size \(200000, 200000\) has more elements than its storage and "
                                              r"than 16777216 \(the limit for broadcast views\)"):
        load_state_dict(one_tensor(tmp_path, 0, (200000, 200000), (0, 0), numel=1))


@pytest.mark.parametrize(
    "offset,size,stride,last",
    [
        (4092, (2, 3), (3, 1), 4097),  # offset + extent past the end
        (4096, (), (), 4096),  # a 0-d tensor one past the end (was an IndexError)
        (0, (2, 2), (4096, 1), 4097),  # the second row starts at the end
    ],
    ids=["extent", "scalar", "row"],
)
def test_views_past_the_end_are_refused(tmp_path, offset, size, stride, last):
    with pytest.raises(CheckpointError, match=rf"reaches element {last}, past the end of its storage"):
        load_state_dict(one_tensor(tmp_path, offset, size, stride))


def test_broadcast_limit_is_exact(tmp_path):
    n = tc.MAX_BROADCAST_ELEMENTS
    sd = load_state_dict(one_tensor(tmp_path, 1, (n,), (0,), stype="ByteStorage", numel=2))
    assert sd["w"].shape == (n,) and sd["w"].min() == sd["w"].max() == 1
    with pytest.raises(CheckpointError, match="limit for broadcast views"):
        load_state_dict(one_tensor(tmp_path, 1, (n + 1,), (0,), stype="ByteStorage", numel=2))
    # a zero-size tensor may not name absurd other dims either
    with pytest.raises(CheckpointError, match="limit for broadcast views"):
        load_state_dict(one_tensor(tmp_path, 0, (0, 2**62), (1, 1)))


def test_many_views_of_one_storage_are_bounded(tmp_path):
    # each view is legal; together they would copy the storage 17 times over
    numel = 2 * tc.MAX_BROADCAST_ELEMENTS
    views = [(f"v{i}", tensor("ByteStorage", "0", numel, 0, (numel,), (1,))) for i in range(17)]
    path = write_pth(tmp_path / "rep.pth", state_dict_pickle(views), {"0": bytes(numel)})
    with pytest.raises(CheckpointError, match=r"more than 16 times their storages' 33554432 plus 16777216"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("short", r"storage archive/data/0 has 12 bytes, expected 16 \(4 FloatStorage elements\)"),
        ("long", r"storage archive/data/0 has 20 bytes, expected 16 \(4 FloatStorage elements\)"),
        ("ragged", r"storage archive/data/0 has 15 bytes, expected 16 \(4 FloatStorage elements\)"),
        ("missing", r"missing storage archive/data/0"),
        ("bfloat16", r"unsupported storage type torch.BFloat16Storage \(supported: FloatStorage, "),
        ("numel", r"storage '0': element count 4.0, expected an int >= 0"),
        ("two types", r"storage '0' is referenced as FloatStorage of 4 elements and as IntStorage of 4"),
    ],
    ids=["short", "long", "ragged", "missing", "bfloat16", "numel", "two-types"],
)
def test_bad_storages_are_refused(tmp_path, kind, message):
    rec = {"short": 12, "long": 20, "ragged": 15}.get(kind, 16)
    records = {} if kind == "missing" else {"0": bytes(rec)}
    stype = "BFloat16Storage" if kind == "bfloat16" else "FloatStorage"
    entries = [("w", tensor(stype, "0", 4.0 if kind == "numel" else 4, 0, (4,), (1,)))]
    if kind == "two types":
        entries.append(("i", tensor("IntStorage", "0", 4, 0, (4,), (1,))))
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(write_pth(tmp_path / "s.pth", state_dict_pickle(entries), records))


def test_values_that_cannot_be_printed_are_refused_on_one_line(tmp_path):
    # an int past Python's str() digit limit; a list nested past the recursion limit (repr fails on both)
    nested = Raw(b"]" * 50000 + b"a" * 49999)
    for offset, size, stride in [(10**5000, (1,), (1,)), (0, (1,), nested), (0, (2, 10**5000), (10**5000, 1))]:
        with pytest.raises(CheckpointError) as e:
            load_state_dict(one_tensor(tmp_path, offset, size, stride))
        assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_pickle_cannot_reconfigure_the_reader(tmp_path):
    # BUILD with slot state would set the module-level function's __defaults__ for every later load
    defaults = tc._rebuild_tensor_v2.__defaults__
    state = b"(N}" + enc("__defaults__") + enc((1,)) + b"st"  # (None, {'__defaults__': (1,)})
    pkl = b"\x80\x02" + glob("torch._utils", "_rebuild_tensor_v2") + state + b"b0" + ODICT + b"."
    with pytest.raises(CheckpointError, match=r"sets the state \(BUILD\) of a storage, tensor or function"):
        load_state_dict(write_pth(tmp_path / "b.pth", pkl, {}))
    assert tc._rebuild_tensor_v2.__defaults__ == defaults
    pkl = b"\x80\x02" + ODICT + b"(" + enc(3) + tensor("FloatStorage", "0", 1, 0, (), ()) + b"u."
    with pytest.raises(CheckpointError, match=r"entry key 3 is not a str"):
        load_state_dict(write_pth(tmp_path / "k.pth", pkl, {"0": bytes(4)}))


# --- fuzzing --------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ODD = st.sampled_from([1.0, "1", None, True, [1], (), -(2**63), 2**64, 10**5000])
SMALL = st.integers(-3, 12)
EDGE = st.sampled_from([-4096, -1, 0, 4096, 200000, 2**31, 2**62])
BROADCASTS = [((200000, 200000), (0, 0)), ((4097, 4096), (0, 0)), ((1000, 1000), (0, 0)), ((0, 2**62), (1, 1))]
CORRUPTIONS = ["offset", "size", "stride", "shape type", "ndim", "broadcast", "record", "numel", "dtype", "share"]


@st.composite
def checkpoints(draw):
    """A state dict spec: valid views of fitting storages, then up to three corruptions of the metadata."""
    storages, tensors = [], []
    for j in range(draw(st.integers(1, 3))):
        ndim = draw(st.integers(0, 3))
        size = draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim))
        stride = draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim))
        offset = draw(st.integers(0, 3))
        extent = 0 if 0 in size else 1 + sum((n - 1) * t for n, t in zip(size, stride))
        numel = offset + extent + draw(st.integers(0, 2))
        stype = draw(st.sampled_from(sorted(ITEMSIZE)))
        nbytes = numel * ITEMSIZE[stype]
        storages.append([stype, str(j), numel, draw(st.binary(min_size=nbytes, max_size=nbytes))])
        tensors.append([f"t{j}", j, offset, tuple(size), tuple(stride), draw(st.booleans())])
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(CORRUPTIONS))
        t = tensors[draw(st.integers(0, len(tensors) - 1))]
        s = storages[t[1]]
        # each corruption applies to a still well-typed field; the rest stay as they are
        shaped = isinstance(t[3], tuple) and isinstance(t[4], tuple)
        if kind == "offset":
            t[2] = draw(st.one_of(EDGE, SMALL, ODD))
        elif kind in ("size", "stride") and shaped:
            i = 3 if kind == "size" else 4
            if t[i]:
                dims = list(t[i])
                dims[draw(st.integers(0, len(dims) - 1))] = draw(st.one_of(EDGE, SMALL))
                t[i] = tuple(dims)
        elif kind == "shape type" and shaped:
            i = draw(st.sampled_from([3, 4]))
            t[i] = draw(st.one_of(ODD, st.just(list(t[i])), st.just(t[i] + (1.0,))))
        elif kind == "ndim" and shaped:
            t[4] = t[4][:-1] if draw(st.booleans()) else t[4] + (1,)
        elif kind == "broadcast":
            t[3], t[4] = draw(st.sampled_from(BROADCASTS))
        elif kind == "record" and s[3] is not None:
            s[3] = draw(st.sampled_from([None, s[3][:-1], s[3] + b"\0", s[3][:len(s[3]) // 2]]))
        elif kind == "numel" and type(s[2]) is int:
            s[2] = draw(st.one_of(st.sampled_from([s[2] - 1, s[2] + 1, -1]), ODD))
        elif kind == "dtype":  # another dtype reads the same bytes: valid only if the itemsize matches
            s[0] = draw(st.sampled_from([*ITEMSIZE, "BFloat16Storage", "ComplexFloatStorage"]))
        elif kind == "share":
            t[1] = 0
    return storages, [tuple(t) for t in tensors]


def ok_int(x):
    return type(x) is int and x >= 0


def expected_state_dict(storages, tensors):
    """Independent oracle: the arrays the reader must return, or None where it must refuse."""
    used = {s for _, s, *_ in tensors}
    arrays = {}
    for s in used:
        stype, _, numel, record = storages[s]
        if not (type(numel) is int and numel >= 0 and stype in DTYPE and record is not None
                and len(record) == numel * ITEMSIZE[stype]):
            return None
        if stype == "BoolStorage":
            arrays[s] = np.frombuffer(record, dtype=np.uint8) != 0
        else:
            arrays[s] = np.frombuffer(record, dtype=np.dtype(DTYPE[stype]).newbyteorder("<"))
    out, total = {}, 0
    for key, s, offset, size, stride, _ in tensors:
        numel = storages[s][2]
        if not (ok_int(offset) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
                and len(size) == len(stride) and all(map(ok_int, size)) and all(map(ok_int, stride))):
            return None
        nonzero = 1
        for n in size:
            nonzero *= max(n, 1)
        if nonzero > max(numel, tc.MAX_BROADCAST_ELEMENTS):
            return None
        count = 0 if 0 in size else nonzero
        last = offset - 1 if count == 0 else offset + sum((n - 1) * t for n, t in zip(size, stride))
        if last >= numel:
            return None
        total += count
        # fancy indexing is bounds-checked by numpy: an oracle that cannot read outside either
        idx = np.full(tuple(size), offset, dtype=np.int64)
        for d, (n, t) in enumerate(zip(size, stride)):
            idx += (np.arange(n, dtype=np.int64) * t).reshape([n if e == d else 1 for e in range(len(size))])
        out[key] = arrays[s][idx].astype(DTYPE[storages[s][0]])
    if total > tc.MAX_TOTAL_FACTOR * sum(storages[s][2] for s in used) + tc.MAX_BROADCAST_ELEMENTS:
        return None
    return out


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(spec=checkpoints())
def test_fuzz_tensor_metadata_matches_oracle(fuzz_dir, spec):
    storages, tensors = spec
    entries = [(key, tensor(storages[s][0], storages[s][1], storages[s][2], offset, size, stride, param))
               for key, s, offset, size, stride, param in tensors]
    records = {sk: rec for _, sk, _, rec in storages if rec is not None}
    path = write_pth(fuzz_dir / "meta.pth", state_dict_pickle(entries), records)
    want = expected_state_dict(storages, tensors)
    if want is None:
        with pytest.raises(CheckpointError):
            load_state_dict(path)
        return
    got = load_state_dict(path)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        assert got[k].tobytes() == want[k].tobytes(), k


RNG = np.random.default_rng(20261125)
BASE_RECORDS = {"0": RNG.bytes(24 * 4), "1": RNG.bytes(5 * 2), "2": RNG.bytes(3 * 8), "3": RNG.bytes(6)}
BASE_PICKLE = state_dict_pickle([
    ("a.base", tensor("FloatStorage", "0", 24, 0, (4, 6), (6, 1))),
    ("a.view", tensor("FloatStorage", "0", 24, 6, (3, 3), (6, 2), param=True)),
    ("b.half", tensor("HalfStorage", "1", 5, 0, (5,), (1,))),
    ("c.count", tensor("LongStorage", "2", 3, 2, (), ())),
    ("d.flags", tensor("ByteStorage", "3", 6, 0, (2, 3), (0, 1))),
])


def aligned_chunks(k):
    return {rec[i:i + k] for rec in BASE_RECORDS.values() for i in range(0, len(rec) - k + 1, k)}


CHUNKS = {k: aligned_chunks(k) for k in (1, 2, 4, 8)}


# where BASE_PICKLE stores a small int (offsets, sizes, strides, element counts): a new value there
# keeps the pickle well-formed and changes the tensor metadata
INT_ARGS = [pos + 1 for op, _, pos in pickletools.genops(BASE_PICKLE) if op.name == "BININT1"]


def mutate(data, ops, ints=()):
    b = bytearray(data)
    for op, pos, val in sorted(ops, key=lambda o: o[0] != "int"):  # before anything shifts the bytes
        if op == "int":
            if ints:
                b[ints[pos % len(ints)]] = val
            continue
        pos = pos % (len(b) + 1)
        if op == "set" and pos < len(b):
            b[pos] = val
        elif op == "flip" and pos < len(b):
            b[pos] ^= 1 << (val % 8)
        elif op == "insert":
            b[pos:pos] = bytes([val])
        elif op == "delete":
            del b[pos:pos + 1 + val % 4]
        elif op == "truncate":
            del b[pos:]
        elif op == "copy":  # repeat a span elsewhere: duplicates opcodes, memo refs, tensors
            src = val * 7 % max(len(b), 1)
            b[pos:pos] = b[src:src + 1 + val % 40]
    return bytes(b)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["int"] * 6 + ["set", "flip", "insert", "delete", "truncate", "copy"]),
                               st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=5)


@FUZZ
@given(ops=MUTATIONS, target=st.sampled_from(["pickle"] * 5 + ["archive"]))
def test_fuzz_mutated_pickle_and_archive_read_inside_storage_or_refuse(fuzz_dir, ops, target):
    path = fuzz_dir / "mut.pth"
    if target == "pickle":
        write_pth(path, mutate(BASE_PICKLE, ops, INT_ARGS), BASE_RECORDS)
    else:  # the zip structure too
        buf = io.BytesIO()
        write_pth(buf, BASE_PICKLE, BASE_RECORDS)
        path.write_bytes(mutate(buf.getvalue(), ops))
    try:
        got = load_state_dict(str(path))
    except CheckpointError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(got, dict)
    for k, v in got.items():
        assert isinstance(k, str) and type(v) is np.ndarray and v.dtype in set(map(np.dtype, DTYPE.values()))
        if v.dtype == np.bool_:  # read as (byte != 0): always 0 or 1
            continue
        flat = np.ascontiguousarray(v).reshape(-1).view(np.uint8).reshape(-1, v.itemsize)
        for row in np.unique(flat, axis=0):
            assert row.tobytes() in CHUNKS[v.itemsize], (k, row)
