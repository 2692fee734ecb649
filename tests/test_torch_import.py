"""Importing official PyTorch checkpoints without torch: the reader, its safety, and parity."""

import os
import pickle
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from clade_tf import ConvEncoder
from clade_tf.torchio.reader import CheckpointError, load_state_dict
from export import from_torch

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


def fx(name):
    return os.path.join(FIX, name)


def test_reader_matches_torch_values_dtypes_views_and_scalars():
    sd = load_state_dict(fx("torch_reader.pth"))
    expected = np.load(fx("torch_reader_expected.npz"))
    assert sorted(sd) == sorted(expected.files)
    for k in expected.files:
        assert sd[k].dtype == expected[k].dtype and sd[k].shape == expected[k].shape, k
        np.testing.assert_array_equal(sd[k], expected[k])
    # a strided view with an offset into a shared storage
    np.testing.assert_array_equal(sd["c.view"], sd["c.base"][1:, ::2])


def test_reader_refuses_code_execution_and_unneeded_globals(tmp_path):
    # the fixture's payload writes to a fixed path outside the test, so only its refusal is checked here
    with pytest.raises(CheckpointError, match=r"refusing to load global posix.system"):
        load_state_dict(fx("torch_malicious.pth"))
    # the same attack aimed at tmp_path: plain pickle runs it, so the marker's absence after the reader means
    # the reader ran nothing
    marker = tmp_path / "pwned"
    arg = str(marker).encode()
    payload = (b"\x80\x02ccollections\nOrderedDict\n)R" + b"X\x08\x00\x00\x00a.weight" + b"cbuiltins\nopen\n"
               + b"X" + len(arg).to_bytes(4, "little") + arg + b"X\x01\x00\x00\x00w\x86R" + b"s.")
    pickle.loads(payload)["a.weight"].close()
    assert marker.exists()
    marker.unlink()
    pth = tmp_path / "malicious.pth"
    with zipfile.ZipFile(fx("torch_malicious.pth")) as src, zipfile.ZipFile(pth, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, payload if name.endswith("/data.pkl") else src.read(name))
    with pytest.raises(CheckpointError, match=r"refusing to load global builtins.open"):
        load_state_dict(str(pth))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refusing to load global __builtin__.eval"):
        load_state_dict(fx("torch_odd_global.pth"))


def test_reader_reads_legacy_and_names_non_checkpoints(tmp_path):
    # the legacy (torch < 1.6, non-zip) format goes to the legacy reader instead of being refused
    expected = np.load(fx("torch_legacy_expected.npz"))
    got = load_state_dict(fx("torch_legacy.pth"))
    assert sorted(got) == sorted(expected.files)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello world")
    with pytest.raises(CheckpointError, match="not a torch checkpoint .neither a zip archive .* nor a legacy"):
        load_state_dict(str(junk))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_state_dict(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_state_dict(str(tmp_path / "missing.pth"))


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_import_icpe_with_instances_matches_official(tmp_path):
    out = str(tmp_path / "run")
    code = from_torch.main([fx("official_tiny_icpe_inst_net_G.pth"), "--preset", "custom", "--label-nc", "3",
                            "--contain-dontcare", "--use-instance", "--image-size", "32x32", "--out", out])
    assert code == 0
    assert sorted(os.listdir(out)) == ["config.json", "generator.keras", "generator.weights.h5"]
    g = keras.models.load_model(os.path.join(out, "generator.keras"))
    c = g.config
    assert (c.norm_mode, c.num_classes, c.use_instance, c.ngf, c.param_free_norm) == ("clade-icpe", 4, True, 2, "syncbatch")
    data = np.load(fx("official_tiny_icpe_inst.npz"))
    inputs = {"label": tf.constant(data["in/label"], tf.int32), "instance": tf.constant(data["in/instance"], tf.int32),
              "dist": tf.constant(nhwc(data["in/dist"]))}
    ours = g.features(inputs, training=False).numpy()
    assert rel_l2(ours, nhwc(data["out/eval_pre_tanh"])) < 1e-4


def test_import_vae_generator_and_encoder_match_official(tmp_path):
    out = str(tmp_path / "run")
    code = from_torch.main([fx("official_tiny_vae_net_G.pth"), "--preset", "custom", "--label-nc", "3",
                            "--image-size", "64x64", "--use-vae", "--encoder", fx("official_tiny_vae_net_E.pth"),
                            "--out", out])
    assert code == 0
    g = keras.models.load_model(os.path.join(out, "generator.keras"))
    assert g.config.use_vae and g.config.param_free_norm == "instance"
    data = np.load(fx("official_tiny_vae.npz"))
    ours = g.features({"label": tf.constant(data["in/label"], tf.int32), "z": tf.constant(data["in/z"])}).numpy()
    assert rel_l2(ours, nhwc(data["out/eval_pre_tanh"])) < 1e-4
    enc = ConvEncoder(ngf=2, z_dim=256, input_size=256)
    enc.build()
    enc.load_weights(os.path.join(out, "encoder.weights.h5"))
    e = np.load(fx("official_tiny_vae_E.npz"))
    mu, logvar = enc(tf.constant(nhwc(e["in/x"])))
    assert rel_l2(mu.numpy(), e["out/mu"]) < 1e-4 and rel_l2(logvar.numpy(), e["out/logvar"]) < 1e-4


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--preset", "ade20k"], (r"has 4 classes \(head_0.norm_0.class_specified_affine.weight \(4, 32\)\) but "
                                  r"--preset ade20k expects 151 classes")),
        (["--preset", "custom", "--label-nc", "3", "--contain-dontcare", "--use-instance", "--norm", "spade"],
         "--norm spade, but the checkpoint is a clade-icpe generator"),
        (["--preset", "custom", "--label-nc", "3", "--contain-dontcare", "--param-free-norm", "instance"],
         "--param-free-norm instance, but the checkpoint's norms have BatchNorm running statistics"),
        (["--preset", "custom", "--label-nc", "3", "--contain-dontcare", "--image-size", "32"],
         "--image-size '32': expected HxW"),
    ],
)
def test_import_errors_are_one_line(extra, message, tmp_path, capsys):
    code = from_torch.main([fx("official_tiny_icpe_inst_net_G.pth"), "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    import re

    assert re.search(message, err[0]), err[0]
    assert not os.path.exists(tmp_path / "r")


def test_import_refuses_a_non_empty_out_and_leaves_no_temp(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = [fx("official_tiny_icpe_inst_net_G.pth"), "--preset", "custom", "--label-nc", "3", "--contain-dontcare",
            "--use-instance", "--image-size", "32x32", "--out", str(out)]
    assert from_torch.main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["r"]


def test_official_checkpoint_to_tflite_to_png_end_to_end(tmp_path):
    from PIL import Image

    from clade_tf.data.icpe import icpe_distance_map
    from clade_tf.export.runtime import load_runner
    from export.__main__ import main as export_main
    from export.infer import main as infer_main

    run, exp = str(tmp_path / "run"), str(tmp_path / "exp")
    assert from_torch.main([fx("official_tiny_icpe_inst_net_G.pth"), "--preset", "custom", "--label-nc", "3",
                            "--contain-dontcare", "--use-instance", "--image-size", "32x32", "--out", run]) == 0
    assert export_main(["--run", run, "--out", exp, "--formats", "tflite"]) == 0
    tflite = load_runner(os.path.join(exp, "model_fp32.tflite"))
    # the TFLite model computes the official generator's output (the fixture, from the official code)
    data = np.load(fx("official_tiny_icpe_inst.npz"))
    lab, inst = data["in/label"].astype(np.int32), data["in/instance"].astype(np.int32)
    official = np.tanh(nhwc(data["out/eval_pre_tanh"]))
    ours = tflite({"label": lab, "instance": inst, "dist": nhwc(data["in/dist"])})
    assert rel_l2(ours, official) < 1e-4
    # export.infer writes that model's image for a label / instance PNG (its ICPE map computed
    # from the labels as training does: the don't-care class 3 left without position), to 8-bit rounding
    Image.fromarray(lab[0].astype(np.uint8)).save(tmp_path / "label.png")
    Image.fromarray(inst[0].astype(np.uint8)).save(tmp_path / "inst.png")
    out = tmp_path / "out.png"
    assert infer_main(["--model", os.path.join(exp, "model_fp32.tflite"), "--labels", str(tmp_path / "label.png"),
                       "--instances", str(tmp_path / "inst.png"), "--out", str(out)]) == 0
    want = tflite({"label": lab[:1], "instance": inst[:1], "dist": icpe_distance_map(lab[0], 3)[None]})[0]
    got = np.asarray(Image.open(out)).astype(np.float32) / 127.5 - 1
    assert np.abs(got - want).max() <= 0.5 / 127.5 + 1e-6
