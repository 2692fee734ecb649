"""clade_tf.metrics: the FID Inception network against pytorch-fid's (reference fixture made
with pytorch-fid on the same stand-in weights, see tests/fixtures/fid_inception/README.md),
FID / KID against closed forms, mIoU / pixel accuracy against hand-computed cases, the
weight and statistics files and their errors."""

import json
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import fid_reference
from clade_tf import metrics
from clade_tf.metrics import fid as fid_module
from clade_tf.metrics import inception
from clade_tf.metrics.kid import mmd2_unbiased, polynomial_kernel
from clade_tf.torchio import reader
from clade_tf.torchio.reader import CheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "fid_inception")
REF = dict(np.load(os.path.join(FIX, "reference.npz")))
SHAPES = json.loads(str(REF["state_dict_shapes"]))
CONV_SHAPES = {k.removesuffix(".conv.weight"): tuple(s) for k, s in SHAPES.items() if k.endswith(".conv.weight")}


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# --- the network against pytorch-fid ------------------------------------------------------


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The stand-in weights in the legacy format, the format of pytorch-fid's real file."""
    path = tmp_path_factory.mktemp("fid_weights") / "stand_in.pth"
    return fid_reference.write_pth(path, fid_reference.fid_state_dict(CONV_SHAPES), legacy=True)


@pytest.fixture(scope="module")
def exact_model(weights_file):
    return metrics.fid_inception(weights_file, fold=False)


@pytest.fixture(scope="module")
def reference_features():
    return {"a": REF["features_a"], "b": REF["features_b"], "big_square": REF["features_big_square"],
            "big_wide": REF["features_big_wide"]}


def our_features(model):
    """Features of the fixture's images the way a user computes them: PNG folders through the
    tf.data pipeline, single images as arrays."""
    return {
        "a": metrics.extract_features(model, metrics.image_folder_dataset(os.path.join(FIX, "set_a"))),
        "b": metrics.extract_features(model, metrics.image_folder_dataset(os.path.join(FIX, "set_b"), batch_size=3)),
        "big_square": metrics.extract_features(model, metrics.load_image(os.path.join(FIX, "big_square.png"))[None]),
        "big_wide": metrics.extract_features(model, metrics.load_image(os.path.join(FIX, "big_wide.png"))[None]),
    }


def test_parameter_count_is_pytorch_fids():
    model = metrics.build_fid_inception()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    buffers = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert trainable == int(REF["params_features"]) == 21_785_568
    assert buffers == int(REF["buffers_features"])  # BatchNorm running means and variances
    # every torch entry has its Keras place with the same shape (fc and num_batches_tracked are not used)
    ours = {k: list(v[2]) for k, v in inception._torch_entries(model).items()}
    theirs = {k: s for k, s in SHAPES.items() if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))}
    assert ours == theirs


def fd_in_span(fa, fb):
    """FID of two small feature sets, computed exactly in the span of their vectors: an
    orthonormal change of coordinates keeps means, covariances and so the distance, and
    turns 2048x2048 square roots into 8x8 ones."""
    q, _ = np.linalg.qr(np.concatenate([fa, fb]).T)
    return metrics.fid_from_features(fa @ q, fb @ q)


@pytest.mark.parametrize("fold", [False, True])
def test_features_and_fid_match_pytorch_fid(fold, exact_model, reference_features):
    model = metrics.fold_batch_norm(exact_model) if fold else exact_model
    ours = our_features(model)
    for name, ref in reference_features.items():
        assert ours[name].shape == ref.shape and ours[name].dtype == np.float64
        assert rel_l2(ours[name], ref) <= 1e-4, name
    for name in ("a", "b"):  # the image-dependent part agrees too, not only the large common part
        centered = ours[name] - ours[name].mean(0)
        assert rel_l2(centered, reference_features[name] - reference_features[name].mean(0)) <= 1e-3
    theirs = float(REF["fid_ab"])  # pytorch-fid's calculate_fid_given_paths on the PNG folders
    assert abs(fd_in_span(reference_features["a"], reference_features["b"]) / theirs - 1) <= 1e-5
    assert abs(fd_in_span(ours["a"], ours["b"]) / theirs - 1) <= 1e-3


@pytest.mark.slow
def test_fid_on_2048_d_statistics_matches_pytorch_fid(exact_model):
    """The literal computation: 2048x2048 covariances and scipy's sqrtm (about a minute here)."""
    ours = our_features(exact_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that the rank-3 covariances' product is singular
        value = metrics.fid_from_features(ours["a"], ours["b"])
    assert abs(value / float(REF["fid_ab"]) - 1) <= 1e-3


def test_resize_and_pooling_match_torch():
    """The building blocks that differ between frameworks, on a small odd-sized input:
    bilinear shrinking and growing without antialiasing, average pooling that leaves out
    the padding, max pooling whose padding never wins."""
    x = np.transpose(REF["small"], (0, 2, 3, 1))
    def nchw(t):
        return np.transpose(np.asarray(t), (0, 3, 1, 2))

    for size, key in (((7, 11), "resize_down"), ((29, 31), "resize_up")):
        got = nchw(tf.image.resize(x, size, method="bilinear", antialias=False))
        np.testing.assert_allclose(got, REF[key], atol=2e-6)
    avg = tf.keras.layers.AveragePooling2D(3, 1, padding="same")(x)
    np.testing.assert_allclose(nchw(avg), REF["avg_pool"], atol=2e-6)
    mx = tf.keras.layers.MaxPooling2D(3, 1, padding="same")(x - 2.0)
    np.testing.assert_allclose(nchw(mx), REF["max_pool"], atol=0)
    pre = inception.FIDPreprocess()(x)
    assert pre.shape == (1, 299, 299, 3)
    np.testing.assert_allclose(np.asarray(pre), 2 * np.asarray(tf.image.resize(x, (299, 299))) - 1, atol=1e-6)


def test_preprocess_layer_config_round_trip():
    layer = inception.FIDPreprocess(size=128, name="pre")
    clone = inception.FIDPreprocess.from_config(layer.get_config())
    assert clone.size == 128 and clone.name == "pre"
    assert clone.compute_output_shape((2, 50, 70, 3)) == (2, 128, 128, 3)


def test_weight_file_formats_read_alike(weights_file, tmp_path):
    zipped = fid_reference.write_pth(tmp_path / "zip.pth", fid_reference.fid_state_dict(CONV_SHAPES))
    legacy, modern = reader.load_state_dict(weights_file), reader.load_state_dict(zipped)
    assert list(legacy) == list(modern) and len(legacy) == len(SHAPES)
    assert all(np.array_equal(legacy[k], modern[k]) and legacy[k].dtype == modern[k].dtype for k in legacy)


def test_input_forms_give_the_same_features(exact_model):
    imgs = np.stack([metrics.load_image(os.path.join(FIX, "set_a", f"{i:02d}.png")) for i in range(3)])
    ref = REF["features_a"][:3]
    as_uint8 = metrics.extract_features(exact_model, imgs, batch_size=2)
    as_float = metrics.extract_features(exact_model, imgs.astype(np.float32) / 255.0)
    singles = metrics.extract_features(exact_model, tf.data.Dataset.from_tensor_slices(imgs), batch_size=2)
    iterable = metrics.extract_features(exact_model, (imgs[i:i + 1] for i in range(3)))
    for got in (as_uint8, as_float, singles, iterable):
        assert got.shape == (3, 2048) and rel_l2(got, ref) <= 1e-4
    # images of different sizes in one call, in order
    mixed = [imgs[:1], metrics.load_image(os.path.join(FIX, "big_wide.png"))[None], imgs[1:2]]
    got = metrics.extract_features(exact_model, iter(mixed))
    assert rel_l2(got[1], REF["features_big_wide"][0]) <= 1e-4 and rel_l2(got[2], ref[1]) <= 1e-4


def test_extract_features_refuses_bad_images(exact_model):
    bad = [
        (np.full((1, 32, 32, 3), -0.5, np.float32), r"values in \[-0.5, -0.5\], expected images in \[0, 1\]"),
        (np.full((1, 32, 32, 3), np.nan, np.float32), "expected images in"),
        (np.zeros((1, 32, 32, 1), np.uint8), r"batch 0 has shape \(1, 32, 32, 1\), expected \[B, H, W, 3\]"),
        (np.zeros((1, 32, 32, 3), np.int32), "batch 0 is int32, expected uint8 or floats"),
        (np.zeros((32, 32, 3), np.uint8), r"expected \[N, H, W, 3\]"),
        (np.zeros((0, 32, 32, 3), np.uint8), "no images"),
    ]
    for images, message in bad:
        with pytest.raises(ValueError, match=message) as e:
            metrics.extract_features(exact_model, images)
        one_line(e)


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 30, 3), np.uint8)
    b = rng.integers(0, 256, (40, 20, 3), np.uint8)
    Image.fromarray(a).save(tmp_path / "b.png")
    Image.fromarray(b).save(tmp_path / "a.PNG")
    Image.fromarray(a).save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [os.path.basename(p) for p in metrics.image_files(tmp_path)] == ["a.PNG", "b.png", "c.png"]
    batches = [x.numpy() for x in metrics.image_folder_dataset(tmp_path, batch_size=4)]
    assert [x.shape for x in batches] == [(1, 40, 20, 3), (2, 20, 30, 3)]  # split where the size changes
    assert np.array_equal(batches[0][0], b) and np.array_equal(batches[1][1], a)
    resized = [x.numpy() for x in metrics.image_folder_dataset(tmp_path, batch_size=2, size=(16, 24))]
    assert [x.shape for x in resized] == [(2, 16, 24, 3), (1, 16, 24, 3)]
    expected = np.asarray(Image.fromarray(b).resize((24, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(resized[0][0], expected)

    with pytest.raises(FileNotFoundError, match="no such image folder") as e:
        metrics.image_files(tmp_path / "missing")
    one_line(e)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images") as e:
        metrics.image_files(empty)
    one_line(e)
    (tmp_path / "d.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="d.png: not a readable image") as e:
        metrics.extract_features(lambda x, training: x[:, 0, 0], metrics.image_folder_dataset(tmp_path))
    one_line(e)


# --- the weight file ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_model():
    return metrics.build_fid_inception()


def test_missing_weight_file_says_where_the_file_comes_from(bare_model, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        metrics.load_fid_weights(bare_model, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    msg = one_line(e)
    assert "pt_inception-2015-12-05-6726825d.pth: no such file" in msg
    assert metrics.WEIGHTS_URL in msg and "nothing is downloaded" in msg


def _write_variant(tmp_path, change, legacy=False):
    sd = fid_reference.fid_state_dict(CONV_SHAPES, fc=False)
    change(sd)
    return fid_reference.write_pth(tmp_path / "variant.pth", sd, legacy=legacy)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("Mixed_6b.branch7x7_2.conv.weight"),
     r"1 of its 470 weights are missing, e\.g\. 'Mixed_6b\.branch7x7_2\.conv\.weight'"),
    (lambda sd: sd.update({"Mixed_7c.branch_pool.conv.weight": np.zeros((192, 2048, 3, 3), np.float32)}),
     r"'Mixed_7c\.branch_pool\.conv\.weight' has shape \(192, 2048, 3, 3\), expected \(192, 2048, 1, 1\)"),
    (lambda sd: sd.update({"extra.weight": np.zeros(3, np.float32)}), r"1 unexpected entries, e\.g\. 'extra\.weight'"),
    (lambda sd: sd.update({"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}), "torchvision's ImageNet"),
    (lambda sd: sd.update({"fc.weight": np.zeros((1000, 2048), np.float32)}), "torchvision's ImageNet"),
    (lambda sd: sd.update({"fc.weight": np.zeros((10, 2048), np.float32)}),
     r"'fc\.weight' has shape \(10, 2048\), expected \(1008, 2048\)"),
    (lambda sd: sd["Conv2d_1a_3x3.bn.running_var"].__setitem__(0, np.nan), "non-finite values"),
])
def test_wrong_weight_files_are_refused_in_one_line(bare_model, tmp_path, change, message):
    path = _write_variant(tmp_path, change)
    with pytest.raises(metrics.WeightsError, match=message) as e:
        metrics.load_fid_weights(bare_model, path)
    msg = one_line(e)
    assert msg.startswith(f"{path}: not the FID Inception weights") and metrics.WEIGHTS_URL in msg


def test_other_and_damaged_files_are_refused_in_one_line(bare_model, tmp_path):
    other = os.path.join(HERE, "fixtures", "official_tiny_vae_net_G.pth")  # a real checkpoint of something else
    with pytest.raises(metrics.WeightsError, match="470 of its 470 weights are missing") as e:
        metrics.load_fid_weights(bare_model, other)
    one_line(e)
    good = _write_variant(tmp_path, lambda sd: None, legacy=True)
    data = Path(good).read_bytes()
    for name, content, message in [
        ("truncated.pth", data[: len(data) // 2], "runs past the end of the file"),
        ("junk.pth", b"hello world", "not a torch checkpoint"),
        ("zip_truncated.pth", Path(_write_variant(tmp_path, lambda sd: None)).read_bytes()[:5000],
         "not a torch checkpoint"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(metrics.WeightsError, match=message) as e:
            metrics.load_fid_weights(bare_model, path)
        msg = one_line(e)
        assert msg.startswith(str(path)) and metrics.WEIGHTS_URL in msg
    with pytest.raises(ValueError, match="not folded"):
        metrics.load_fid_weights(metrics.fold_batch_norm(bare_model), good)


def test_weights_land_where_they_belong(tmp_path):
    """Each torch entry sets the Keras weight of the same name (conv kernels OIHW -> HWIO)."""
    sd = fid_reference.fid_state_dict(CONV_SHAPES, fc=False)
    model = metrics.build_fid_inception()
    metrics.load_fid_weights(model, fid_reference.write_pth(tmp_path / "w.pth", sd))
    conv = model.get_layer("Mixed_6b.branch7x7_2.conv")
    np.testing.assert_array_equal(conv.kernel.numpy(), sd["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    bn = model.get_layer("Mixed_7c.branch_pool.bn")
    for w, key in zip(bn.weights, ("weight", "bias", "running_mean", "running_var")):
        np.testing.assert_array_equal(w.numpy(), sd[f"Mixed_7c.branch_pool.bn.{key}"])


# --- the legacy checkpoint reader ---------------------------------------------------------


def test_legacy_reader_reads_torch_written_file():
    got = reader.load_state_dict(os.path.join(HERE, "fixtures", "torch_legacy.pth"))
    expected = np.load(os.path.join(HERE, "fixtures", "torch_legacy_expected.npz"))
    assert sorted(got) == sorted(expected.files)
    for k in expected.files:
        assert got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k]), k


def _legacy_bytes(main_pickle, keys=("0",), records=((4, b"\0" * 16),), header=None):
    out = b"".join(pickle.dumps(h, protocol=2) for h in (header or (
        reader.LEGACY_MAGIC, reader.LEGACY_PROTOCOL, {"little_endian": True})))
    out += main_pickle + pickle.dumps(list(keys), protocol=2)
    return out + b"".join(struct.pack("<q", n) + raw for n, raw in records)


def _one_tensor_pickle(pid_extra=b"N", numel=4, global_=b"ctorch._utils\n_rebuild_tensor_v2\n"):
    def s(t):
        return b"X" + struct.pack("<I", len(t)) + t.encode()

    odict = b"ccollections\nOrderedDict\n)R"
    pid = b"(" + s("storage") + b"ctorch\nFloatStorage\n" + s("0") + s("cpu") + b"K" + bytes([numel]) + pid_extra + b"t"
    t = global_ + b"(" + pid + b"QK\x00(K\x04t(K\x01t\x89" + odict + b"tR"
    return b"\x80\x02" + odict + b"(" + s("w") + t + b"u."


@pytest.mark.parametrize("data, message", [
    (_legacy_bytes(_one_tensor_pickle()), None),
    (_legacy_bytes(_one_tensor_pickle(global_=b"cposix\nsystem\n")), "refusing to load global posix.system"),
    (_legacy_bytes(_one_tensor_pickle(pid_extra=b"(X\x01\x00\x00\x001K\x00K\x02t")),
     "is a view of another storage"),
    (_legacy_bytes(_one_tensor_pickle(), records=((5, b"\0" * 20),)), "has 5 elements, expected 4"),
    (_legacy_bytes(_one_tensor_pickle(), records=((4, b"\0" * 12),)), "runs past the end of the file"),
    (_legacy_bytes(_one_tensor_pickle(), records=((4, b"\0" * 20),)), "4 bytes follow the last storage"),
    (_legacy_bytes(_one_tensor_pickle(), keys=("0", "1")), "does not match the 1 storages"),
    (_legacy_bytes(_one_tensor_pickle(), header=(123, 1001, {"little_endian": True})), "magic number 123"),
    (_legacy_bytes(_one_tensor_pickle(), header=(reader.LEGACY_MAGIC, 1001, {"little_endian": False})),
     "big-endian"),
    (b"\x80\x02cos\nsystem\n(X\x02\x00\x00\x00lstR.", "the header refers to the global os.system"),
    (_legacy_bytes(_one_tensor_pickle())[:60], "malformed state-dict pickle"),
])
def test_legacy_reader_checks_everything(tmp_path, data, message):
    path = tmp_path / "legacy.pth"
    path.write_bytes(data)
    if message is None:
        got = reader.load_state_dict(path)
        assert list(got) == ["w"] and got["w"].shape == (4,) and got["w"].dtype == np.float32
        return
    with pytest.raises(CheckpointError, match=message) as e:
        reader.load_state_dict(path)
    assert one_line(e).startswith(str(path))


# --- FID ----------------------------------------------------------------------------------


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 3, 5), rng.uniform(0.5, 3, 5)  # diagonal covariances
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # a scaled identity against a full covariance: sqrt(a I S) = sqrt(a) sqrt(S)
    m = rng.normal(size=(6, 6))
    s = m @ m.T + 0.1 * np.eye(6)
    a = 2.5
    w = np.linalg.eigvalsh(s)
    expected = 6 * a + np.trace(s) - 2 * np.sqrt(a) * np.sum(np.sqrt(w))
    assert metrics.frechet_distance(np.zeros(6), a * np.eye(6), np.zeros(6), s) == pytest.approx(expected, rel=1e-9)
    # symmetric in its arguments, zero for equal statistics
    assert metrics.frechet_distance(np.zeros(6), s, mu1[:1].repeat(6), a * np.eye(6)) == pytest.approx(
        metrics.frechet_distance(mu1[:1].repeat(6), a * np.eye(6), np.zeros(6), s), rel=1e-9)
    assert abs(metrics.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1))) < 1e-12


def test_fid_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 1.0])
    x = mu1 + np.sqrt(s1) * rng.standard_normal((200_000, 3))
    y = mu2 + np.sqrt(s2) * rng.standard_normal((200_000, 3))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert metrics.fid_from_features(x, y) == pytest.approx(expected, rel=1e-2)


def test_fid_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((500, 64)) * rng.uniform(0.5, 2, 64) + 3
    mu, sigma = metrics.statistics(f)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    # fewer samples than dimensions: a singular covariance, whose square root's zero
    # eigenvalues come out at the square root of rounding (~1e-8 relative)
    ref = np.concatenate([REF["features_a"], REF["features_b"]]).astype(np.float64)
    q, _ = np.linalg.qr(ref.T)
    assert abs(metrics.fid_from_features(ref @ q, ref @ q)) < 1e-7 * np.trace(metrics.statistics(ref)[1])


def test_frechet_distance_fallbacks_follow_pytorch_fid(monkeypatch):
    calls = []
    real = fid_module.linalg.sqrtm

    def singular_first(a):  # as if the product were singular: non-finite, then the eps retry
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    monkeypatch.setattr(fid_module.linalg, "sqrtm", singular_first)
    with pytest.warns(RuntimeWarning, match="adding 1e-06 to the diagonals"):
        value = metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2)))
    assert value == pytest.approx(2.0, abs=1e-5)  # (1 - 2)^2 + (2 - 1)^2

    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda a: real(a) + 1e-5j)  # rounding: dropped
    assert metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(2.0, abs=1e-9)
    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda a: real(a) + 0.5j)
    with pytest.raises(ValueError, match="imaginary component of 0.5") as e:
        metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
    one_line(e)


def test_frechet_distance_refuses_mismatched_statistics():
    with pytest.raises(ValueError, match="statistics of 3-d and 2-d features cannot be compared"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"mu has shape \(3,\) and sigma \(2, 2\)"):
        metrics.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.statistics(np.zeros((1, 4)))


# --- statistics files ---------------------------------------------------------------------


def test_stats_files_round_trip_in_pytorch_fids_layout(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = metrics.statistics(rng.normal(size=(50, 2048)).astype(np.float32))
    path = tmp_path / "stats.npz"
    metrics.save_stats(path, mu, sigma)
    with np.load(path) as f:  # what pytorch-fid reads: f["mu"][:], f["sigma"][:]
        assert sorted(f.files) == ["mu", "sigma"] and f["mu"].dtype == np.float64
        np.testing.assert_array_equal(f["sigma"][:], sigma)
    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))  # pytorch-fid --save-stats
    got_mu, got_sigma = metrics.load_stats(theirs)
    assert got_mu.dtype == np.float64 and got_sigma.shape == (2048, 2048)
    np.testing.assert_allclose(got_mu, mu, rtol=1e-6)


def test_stats_files_errors_are_one_line(tmp_path):
    def check(path, message, exc=ValueError, **kw):
        with pytest.raises(exc, match=message) as e:
            metrics.load_stats(path, **kw)
        assert one_line(e).startswith(str(path))

    check(tmp_path / "missing.npz", "no such statistics file", FileNotFoundError)
    np.savez(tmp_path / "keys.npz", mean=np.zeros(2048), cov=np.eye(2048))
    check(tmp_path / "keys.npz", r"need the arrays 'mu' and 'sigma', found \['cov', 'mean'\]")
    np.savez(tmp_path / "small.npz", mu=np.zeros(768), sigma=np.eye(768))
    check(tmp_path / "small.npz",
          r"mu has shape \(768,\) and sigma \(768, 768\), expected \(2048,\) and \(2048, 2048\)")
    assert metrics.load_stats(tmp_path / "small.npz", dim=None)[0].shape == (768,)
    np.savez(tmp_path / "square.npz", mu=np.zeros(4), sigma=np.zeros((4, 3)))
    check(tmp_path / "square.npz", r"mu has shape \(4,\) and sigma \(4, 3\), expected \(D,\) and \(D, D\)", dim=None)
    np.savez(tmp_path / "ints.npz", mu=np.zeros(3, int), sigma=np.eye(3, dtype=int))
    check(tmp_path / "ints.npz", "expected floats", dim=3)
    np.save(tmp_path / "single.npy", np.zeros(3))
    check(tmp_path / "single.npy", "a single .npy array")
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    check(tmp_path / "junk.npz", "not a readable .npz")
    metrics.save_stats(tmp_path / "good.npz", np.zeros(2048), np.eye(2048))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    check(tmp_path / "cut.npz", "not a readable .npz")
    np.savez(tmp_path / "nan.npz", mu=np.full(3, np.nan), sigma=np.eye(3))
    check(tmp_path / "nan.npz", "NaN or Inf", dim=3)


# --- KID ----------------------------------------------------------------------------------


def expected_kernel(a, A, b, B, d):
    """E[(x.y / d + 1)^3] for independent x ~ N(a, A), y ~ N(b, B), from the moments of x.y:
    E[x.y] = a.b, E[(x.y)^2] = tr((A + aa')(B + bb')),
    E[(x.y)^3] = c^3 + 3c (a'Ba + b'Ab + tr(AB)) + 6 a'BAb with c = a.b."""
    c = a @ b
    m2 = np.trace((A + np.outer(a, a)) @ (B + np.outer(b, b)))
    m3 = c ** 3 + 3 * c * (a @ B @ a + b @ A @ b + np.trace(A @ B)) + 6 * (a @ B @ A @ b)
    return 1 + 3 * c / d + 3 * m2 / d ** 2 + m3 / d ** 3


def test_kid_matches_the_gaussians_mmd():
    rng = np.random.default_rng(4)
    d = 3
    a, b = np.array([0.5, -0.2, 0.1]), np.array([0.1, 0.3, -0.4])
    la, lb = 0.4 * rng.standard_normal((d, d)), 0.4 * rng.standard_normal((d, d))
    A, B = la @ la.T + 0.3 * np.eye(d), lb @ lb.T + 0.2 * np.eye(d)
    mmd2 = expected_kernel(a, A, a, A, d) + expected_kernel(b, B, b, B, d) - 2 * expected_kernel(a, A, b, B, d)
    x, y = rng.multivariate_normal(a, A, 40_000), rng.multivariate_normal(b, B, 40_000)
    # Small subsets, where the estimator's bias would show: the mean over 1000 subsets is within
    # 4 standard errors of the MMD^2 (here 1.8; the biased estimator, with k(x_i, x_i) in the
    # within-set means, is 23-37 standard errors off for such Gaussians).
    mean, std = metrics.kernel_inception_distance(x, y, n_subsets=1000, subset_size=10, seed=0)
    assert abs(mean - mmd2) < 4 * std / np.sqrt(1000)
    same, _ = metrics.kernel_inception_distance(x[:20_000], x[20_000:], n_subsets=200, subset_size=100, seed=0)
    assert abs(same) < 0.01 * mmd2


def test_mmd_estimator_and_subsets():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 4)), rng.normal(1, 1, size=(6, 4))
    def k(u, v):
        return (u @ v / 4 + 1) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    cross = sum(k(x[i], y[j]) for i in range(6) for j in range(6)) / 36
    assert mmd2_unbiased(x, y) == pytest.approx(within - 2 * cross, rel=1e-12)
    assert polynomial_kernel(x, y).shape == (6, 6)
    # subsets are torch-fidelity's draws: RandomState(seed).choice, first set then second
    xs, ys = rng.normal(size=(30, 4)), rng.normal(size=(40, 4))
    r = np.random.RandomState(7)
    draws = [mmd2_unbiased(xs[r.choice(30, 8, replace=False)], ys[r.choice(40, 8, replace=False)]) for _ in range(5)]
    assert metrics.kernel_inception_distance(xs, ys, n_subsets=5, subset_size=8, seed=7) == pytest.approx(
        (np.mean(draws), np.std(draws)), rel=1e-12)
    # the subset size is capped at the smaller set: every draw is all of it
    mean, std = metrics.kernel_inception_distance(xs[:5], ys, n_subsets=3, subset_size=1000)
    assert std >= 0 and np.isfinite(mean)
    mean, std = metrics.kernel_inception_distance(xs[:5], ys[:5], n_subsets=3)
    assert std < 1e-12 * abs(mean)  # every draw is the whole set (summed in another order)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.kernel_inception_distance(xs[:1], ys)
    with pytest.raises(ValueError, match=r"shapes \(30, 4\) and \(40, 3\)"):
        metrics.kernel_inception_distance(xs, ys[:, :3])


# --- mIoU and pixel accuracy --------------------------------------------------------------


def test_miou_and_pixel_accuracy_hand_computed():
    # 3 classes, don't-care 255. Label / prediction, 2 images of 2x4:
    label = np.array([[[0, 0, 1, 1], [2, 255, 255, 1]],
                      [[0, 1, 1, 255], [0, 0, 2, 2]]])
    pred = np.array([[[0, 1, 1, 1], [2, 2, 0, 1]],
                     [[0, 1, 2, 2], [0, 0, 2, 0]]])
    # 13 pixels count (label != 255); (label, prediction) pairs among them:
    # (0,0) x4, (0,1), (1,1) x4, (1,2), (2,2) x2, (2,0)
    # class 0: TP 4, FN 1 (0->1), FP 1 (2->0): 4/6; class 1: TP 4, FN 1 (1->2), FP 1 (0->1): 4/6;
    # class 2: TP 2, FN 1 (2->0), FP 1 (1->2): 2/4; pixel accuracy 10/13
    cm = metrics.ConfusionMatrix(3, ignore_index=255)
    cm.update(pred[:1], label[:1]).update(pred[1:], label[1:])  # accumulated over batches
    np.testing.assert_allclose(cm.iou(), [4 / 6, 4 / 6, 2 / 4])
    assert cm.mean_iou() == pytest.approx((4 / 6 + 4 / 6 + 2 / 4) / 3)
    assert cm.pixel_accuracy() == pytest.approx(10 / 13)
    assert cm.matrix.sum() == 13
    whole = metrics.ConfusionMatrix(3, ignore_index=255).update(pred, label)
    np.testing.assert_array_equal(whole.matrix, cm.matrix)


def test_miou_leaves_out_classes_absent_from_both():
    cm = metrics.ConfusionMatrix(4, ignore_index=0)  # class 0 is don't-care here, class 3 never occurs
    cm.update(np.array([[1, 1, 2, 3, 0]]), np.array([[1, 2, 2, 0, 0]]))
    iou = cm.iou()
    assert np.isnan(iou[0]) and np.isnan(iou[3])  # 0: only don't-care; 3: predicted on a don't-care pixel only
    np.testing.assert_allclose(iou[1:3], [1 / 2, 1 / 2])
    assert cm.mean_iou() == pytest.approx(0.5) and cm.pixel_accuracy() == pytest.approx(2 / 3)
    cm.update(np.array([3]), np.array([1]))  # predicted but never labelled: IoU 0, and it counts
    assert cm.iou()[3] == 0 and cm.mean_iou() == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)


def test_miou_errors():
    cm = metrics.ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match=r"label values span \[0, 7\], expected \[0, 2\] for num_classes=3 "
                                         r"\(don't-care 255 excluded\)"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match=r"prediction values span \[-1, 1\]"):
        cm.update(np.array([-1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="expected the same"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="expected integer class ids"):
        cm.update(np.zeros(2), np.zeros(2, int))
    cm.update(np.array([1, 2]), np.array([255, 255]))
    with pytest.raises(ValueError, match="no pixels"):
        cm.mean_iou()
    with pytest.raises(ValueError, match="no pixels"):
        cm.pixel_accuracy()


def test_segmentation_scores_with_a_segmenter_over_tf_data():
    labels = np.array([[[0, 1], [2, 255]], [[1, 1], [0, 2]]])
    images = np.zeros((2, 2, 2, 3), np.float32)
    truth_scores = tf.one_hot(np.where(labels == 255, 0, labels), 3)  # a perfect segmenter's scores
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(1)
    calls = iter(truth_scores.numpy()[:, None])
    scores = metrics.segmentation_scores(lambda x: next(calls), ds, 3, ignore_index=255)
    assert scores["miou"] == 1.0 and scores["pixel_accuracy"] == 1.0
    ids = iter([np.array([[[0, 0], [2, 0]]]), np.array([[[1, 1], [0, 0]]])])  # class ids instead of scores
    scores = metrics.segmentation_scores(lambda x: next(ids), ds, 3, ignore_index=255)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    np.testing.assert_allclose(scores["iou"], [1 / 2, 2 / 3, 1 / 2])
    with pytest.raises(ValueError, match="gives 4 class scores, expected 3"):
        metrics.segmentation_scores(lambda x: np.zeros((1, 2, 2, 4)), ds, 3)


# --- the benchmark ------------------------------------------------------------------------


def test_feature_benchmark_runs_and_shows_its_defaults(capsys):
    from benchmarks import fid_features

    with pytest.raises(SystemExit):
        fid_features.parse_args(["--help"])
    options = capsys.readouterr().out.split("options:")[1]
    for entry in options.split("\n  --")[1:]:
        assert "(default:" in entry, entry
    for argv, message in ((["--size", "12y"], "expected HEIGHTxWIDTH"), (["--images", "0"], "--images must be >= 1"),
                          (["--torch-python", "/nonexistent/python"], "no such file")):
        with pytest.raises(SystemExit):
            fid_features.parse_args(argv)
        assert message in capsys.readouterr().err
    assert fid_features.main(["--images", "3", "--batch-size", "2", "--size", "40x24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["size"] == [40, 24] and result["images"] == 3 and "random" in result["weights"]
    (row,) = result["rows"]
    assert row["images_per_s"] > 0 and len(row["seconds"]) == 1
