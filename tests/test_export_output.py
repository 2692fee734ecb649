"""What `python -m export` prints: the TFLite converter's known-harmless messages (absl's
trackable_obj deprecation, the quantizer's input-statistics UserWarning, the C++ quantizer's
settings line) are silenced; its other warnings and output still show, all of it when a
conversion fails."""

import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from clade_tf.export import converters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARMLESS = ("trackable_obj", "Statistics for quantized inputs", "fully_quantize:")
QUANTIZER_LINE = b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32\n"


def tiny_function():
    """A label map in, an image out, with float ops for int8 to quantize."""
    w = tf.constant(np.linspace(-1, 1, 3, dtype=np.float32)[None, :])

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4], tf.int32)])
    def fn(label):
        x = tf.cast(label, tf.float32)[..., None] / 5.0
        return {"image": tf.tanh(tf.matmul(tf.reshape(x, [16, 1]), w))}

    calibration = [{"label": np.random.default_rng(i).integers(0, 6, (1, 4, 4)).astype(np.int32)} for i in range(4)]
    return fn, calibration


def everything_printed(capfd, caplog):
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_int8_conversion_prints_none_of_the_known_harmless_lines(capfd, caplog):
    fn, calibration = tiny_function()
    with caplog.at_level(logging.WARNING):
        assert converters.tflite_bytes(fn, ["label"], "tflite-int8", calibration)[4:8] == b"TFL3"
    printed = everything_printed(capfd, caplog)
    assert not [h for h in HARMLESS if h in printed], printed


def test_other_warnings_and_native_output_still_show(capfd, caplog, monkeypatch):
    original = tf.lite.TFLiteConverter.convert

    def convert(self):
        warnings.warn("a converter warning the project does not know", UserWarning, stacklevel=1)
        warnings.warn("Statistics for quantized inputs were expected, but not specified; continuing anyway.",
                      UserWarning, stacklevel=1)
        logging.getLogger("absl").warning("an absl warning the project does not know")
        os.write(2, QUANTIZER_LINE + b"a native line the project does not know\n")
        os.write(1, b"a native stdout line\n")
        return original(self)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", convert)
    fn, _ = tiny_function()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        converters.tflite_bytes(fn, ["label"], "tflite-fp32")
    assert [str(w.message) for w in seen] == ["a converter warning the project does not know"]
    printed = everything_printed(capfd, caplog)
    for line in ("an absl warning the project does not know", "a native line the project does not know",
                 "a native stdout line"):
        assert line in printed, printed
    assert not [h for h in HARMLESS if h in printed], printed


def test_a_failed_conversion_shows_all_it_printed(capfd, monkeypatch):
    def convert(self):
        os.write(2, QUANTIZER_LINE + b"error: the op the converter could not convert\n")
        raise RuntimeError("conversion failed\nsee above")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", convert)
    fn, _ = tiny_function()
    with pytest.raises(converters.ExportError, match="tflite-fp32: TFLite conversion with builtin ops failed: see above"):
        converters.tflite_bytes(fn, ["label"], "tflite-fp32")
    err = capfd.readouterr().err
    assert QUANTIZER_LINE.decode() in err and "the op the converter could not convert" in err
    # the descriptors are back: what is written now is not held any more
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


@pytest.mark.slow
def test_python_m_export_output_holds_none_of_the_known_harmless_lines(tmp_path):
    """Full-integer int8 and its explanation (a conversion per layer group) included."""
    from test_export import make_synthetic_run

    run, _, _ = make_synthetic_run(tmp_path)
    p = subprocess.run([sys.executable, "-m", "export", "--run", run, "--out", str(tmp_path / "exp"),
                        "--formats", "tflite-fp32,tflite-int8", "--explain-int8"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    printed = p.stdout + p.stderr
    assert not [h for h in HARMLESS if h in printed], printed
    assert "model_int8.tflite" in p.stdout and "int8 in conv_img" in p.stdout and "wrote" in p.stdout
