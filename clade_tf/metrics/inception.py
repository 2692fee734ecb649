"""The FID Inception network as a Keras model (NHWC), with its weights read from
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.

The network is TensorFlow's 2015-12-05 Inception-v3 graph, the one the original FID
code uses, in pytorch-fid's port: torchvision's Inception-v3 layout (every conv is
conv without bias -> BatchNorm(eps 1e-3) -> ReLU) with pytorch-fid's patches, which
this model follows exactly:

- the average-pool branches of Mixed_5b..5d (A), 6b..6e (C) and 7b (E_1) average only
  over pixels inside the image (`count_include_pad=False`, TensorFlow's behaviour):
  Keras' `AveragePooling2D(padding="same")` does just that;
- Mixed_7c (E_2) has a 3x3 *max* pool in its pool branch where the paper has average;
- the output is the global average of Mixed_7c: the 2048-d "pool3" features.

Images in [0, 1] of any size are resized bilinearly to 299x299 without antialiasing
(half-pixel centres: torch's `F.interpolate(..., align_corners=False)`) and scaled to
[-1, 1], as pytorch-fid does. Layer names are the torch module paths
(`Mixed_6b.branch7x7_2.conv`), so each weight has exactly one place. For inference the
BatchNorms are folded into the convs (`fold_batch_norm`, what `fid_inception` returns).
"""

import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from clade_tf.torchio.reader import CheckpointError, load_state_dict

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
BN_EPSILON = 1e-3
FC_SHAPE = (1008, FEATURE_DIM)  # the 2015 graph's 1008-way classifier; not used for features


class WeightsError(ValueError):
    """The file is a readable checkpoint, but not the FID Inception weights."""


@keras.saving.register_keras_serializable(package="clade_tf")
class FIDPreprocess(layers.Layer):
    """Images in [0, 1], any size -> `size` x `size` in [-1, 1], as pytorch-fid feeds its network."""

    def __init__(self, size=INPUT_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, x):
        # antialias=False: torch's bilinear interpolate does not low-pass when it shrinks either
        x = tf.image.resize(x, (self.size, self.size), method="bilinear", antialias=False)
        return 2.0 * x - 1.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def _conv(x, name, filters, kernel, strides=1, padding="valid", folded=False):
    """torchvision's BasicConv2d. Every stride-1 conv of the network pads (k - 1) / 2,
    which is "same"; every stride-2 conv pads 0, which is "valid". `folded`: the
    BatchNorm is folded into the conv (kernel and bias), the inference form."""
    x = layers.Conv2D(filters, kernel, strides, padding, use_bias=folded, name=f"{name}.conv")(x)
    if not folded:
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}.bn")(x)
    return layers.ReLU(name=f"{name}.relu")(x)


def _avg_pool(x, name):
    # "same" average pooling divides by the number of pixels inside the image: count_include_pad=False
    return layers.AveragePooling2D(3, 1, padding="same", name=f"{name}.pool")(x)


def _block_a(x, name, pool_features, conv):
    b1 = conv(x, f"{name}.branch1x1", 64, 1)
    b5 = conv(x, f"{name}.branch5x5_1", 48, 1)
    b5 = conv(b5, f"{name}.branch5x5_2", 64, 5, padding="same")
    b3 = conv(x, f"{name}.branch3x3dbl_1", 64, 1)
    b3 = conv(b3, f"{name}.branch3x3dbl_2", 96, 3, padding="same")
    b3 = conv(b3, f"{name}.branch3x3dbl_3", 96, 3, padding="same")
    bp = conv(_avg_pool(x, name), f"{name}.branch_pool", pool_features, 1)
    return layers.Concatenate(name=name)([b1, b5, b3, bp])


def _block_b(x, name, conv):
    b3 = conv(x, f"{name}.branch3x3", 384, 3, strides=2)
    bd = conv(x, f"{name}.branch3x3dbl_1", 64, 1)
    bd = conv(bd, f"{name}.branch3x3dbl_2", 96, 3, padding="same")
    bd = conv(bd, f"{name}.branch3x3dbl_3", 96, 3, strides=2)
    bp = layers.MaxPooling2D(3, 2, name=f"{name}.pool")(x)
    return layers.Concatenate(name=name)([b3, bd, bp])


def _block_c(x, name, c7, conv):
    b1 = conv(x, f"{name}.branch1x1", 192, 1)
    b7 = conv(x, f"{name}.branch7x7_1", c7, 1)
    b7 = conv(b7, f"{name}.branch7x7_2", c7, (1, 7), padding="same")
    b7 = conv(b7, f"{name}.branch7x7_3", 192, (7, 1), padding="same")
    bd = conv(x, f"{name}.branch7x7dbl_1", c7, 1)
    bd = conv(bd, f"{name}.branch7x7dbl_2", c7, (7, 1), padding="same")
    bd = conv(bd, f"{name}.branch7x7dbl_3", c7, (1, 7), padding="same")
    bd = conv(bd, f"{name}.branch7x7dbl_4", c7, (7, 1), padding="same")
    bd = conv(bd, f"{name}.branch7x7dbl_5", 192, (1, 7), padding="same")
    bp = conv(_avg_pool(x, name), f"{name}.branch_pool", 192, 1)
    return layers.Concatenate(name=name)([b1, b7, bd, bp])


def _block_d(x, name, conv):
    b3 = conv(x, f"{name}.branch3x3_1", 192, 1)
    b3 = conv(b3, f"{name}.branch3x3_2", 320, 3, strides=2)
    b7 = conv(x, f"{name}.branch7x7x3_1", 192, 1)
    b7 = conv(b7, f"{name}.branch7x7x3_2", 192, (1, 7), padding="same")
    b7 = conv(b7, f"{name}.branch7x7x3_3", 192, (7, 1), padding="same")
    b7 = conv(b7, f"{name}.branch7x7x3_4", 192, 3, strides=2)
    bp = layers.MaxPooling2D(3, 2, name=f"{name}.pool")(x)
    return layers.Concatenate(name=name)([b3, b7, bp])


def _block_e(x, name, pool, conv):
    b1 = conv(x, f"{name}.branch1x1", 320, 1)
    b3 = conv(x, f"{name}.branch3x3_1", 384, 1)
    b3 = layers.Concatenate(name=f"{name}.branch3x3")([
        conv(b3, f"{name}.branch3x3_2a", 384, (1, 3), padding="same"),
        conv(b3, f"{name}.branch3x3_2b", 384, (3, 1), padding="same")])
    bd = conv(x, f"{name}.branch3x3dbl_1", 448, 1)
    bd = conv(bd, f"{name}.branch3x3dbl_2", 384, 3, padding="same")
    bd = layers.Concatenate(name=f"{name}.branch3x3dbl")([
        conv(bd, f"{name}.branch3x3dbl_3a", 384, (1, 3), padding="same"),
        conv(bd, f"{name}.branch3x3dbl_3b", 384, (3, 1), padding="same")])
    if pool == "avg":
        bp = _avg_pool(x, name)
    else:  # FIDInceptionE_2: max pooling (padding never wins a max, as torch's -inf padding)
        bp = layers.MaxPooling2D(3, 1, padding="same", name=f"{name}.pool")(x)
    bp = conv(bp, f"{name}.branch_pool", 192, 1)
    return layers.Concatenate(name=name)([b1, b3, bd, bp])


def build_fid_inception(resize_input=True, folded=False, name="fid_inception"):
    """The FID Inception network with untrained weights: `[N, H, W, 3]` -> `[N, 2048]` float32.

    With `resize_input` the input is images in [0, 1] of any size (resized to 299x299 and
    scaled to [-1, 1] inside the model); without it, 299x299 images already in [-1, 1].
    `folded` builds the inference form (`fold_batch_norm`): convs with biases, no BatchNorm.
    """
    def conv(x, *args, **kwargs):
        return _conv(x, *args, folded=folded, **kwargs)

    if resize_input:
        inp = keras.Input((None, None, 3), name="images")
        x = FIDPreprocess(name="preprocess")(inp)
    else:
        inp = x = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
    x = conv(x, "Conv2d_1a_3x3", 32, 3, strides=2)
    x = conv(x, "Conv2d_2a_3x3", 32, 3)
    x = conv(x, "Conv2d_2b_3x3", 64, 3, padding="same")
    x = layers.MaxPooling2D(3, 2, name="maxpool1")(x)
    x = conv(x, "Conv2d_3b_1x1", 80, 1)
    x = conv(x, "Conv2d_4a_3x3", 192, 3)
    x = layers.MaxPooling2D(3, 2, name="maxpool2")(x)
    x = _block_a(x, "Mixed_5b", 32, conv)
    x = _block_a(x, "Mixed_5c", 64, conv)
    x = _block_a(x, "Mixed_5d", 64, conv)
    x = _block_b(x, "Mixed_6a", conv)
    x = _block_c(x, "Mixed_6b", 128, conv)
    x = _block_c(x, "Mixed_6c", 160, conv)
    x = _block_c(x, "Mixed_6d", 160, conv)
    x = _block_c(x, "Mixed_6e", 192, conv)
    x = _block_d(x, "Mixed_7a", conv)
    x = _block_e(x, "Mixed_7b", "avg", conv)
    x = _block_e(x, "Mixed_7c", "max", conv)
    x = layers.GlobalAveragePooling2D(name="pool3")(x)
    return keras.Model(inp, x, name=name)


def fold_batch_norm(model):
    """The inference form of a `build_fid_inception` model: each conv -> BatchNorm pair
    becomes one conv with kernel * s and bias beta - mean * s, s = gamma / sqrt(var + eps)
    (in float64). Same features up to float32 rounding, about a quarter faster on CPU."""
    resize = any(isinstance(layer, FIDPreprocess) for layer in model.layers)
    folded = build_fid_inception(resize_input=resize, folded=True, name=model.name)
    for layer in folded.layers:
        if isinstance(layer, layers.Conv2D):
            kernel = np.asarray(model.get_layer(layer.name).kernel, np.float64)
            bn = model.get_layer(layer.name.removesuffix(".conv") + ".bn")
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
            scale = gamma / np.sqrt(var + bn.epsilon)
            layer.set_weights([(kernel * scale).astype(np.float32), (beta - mean * scale).astype(np.float32)])
    return folded


def _torch_entries(model):
    """{state-dict key: (layer, index in layer.weights, torch shape)} for every weight."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            out[f"{layer.name}.weight"] = (layer, 0, (cout, cin, kh, kw))
        elif isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            for i, k in enumerate(("weight", "bias", "running_mean", "running_var")):
                out[f"{layer.name}.{k}"] = (layer, i, (n,))
    return out


def _not_fid(path, problem):
    return WeightsError(f"{path}: not the FID Inception weights ({problem}); expected pytorch-fid's "
                        f"{WEIGHTS_FILE} from {WEIGHTS_URL}")


def load_fid_weights(model, path):
    """Sets `model`'s (from `build_fid_inception`) weights from pytorch-fid's `.pth` at `path`.

    The file is read without torch and nothing is downloaded. The state dict must hold
    exactly the network's entries (BatchNorm `num_batches_tracked` and the unused
    1008-way `fc` may be there too) with pytorch-fid's shapes, all finite.
    Raises `FileNotFoundError` (missing file), `WeightsError` (a `ValueError`: not a
    checkpoint, or not these weights).
    """
    if not any(isinstance(layer, layers.BatchNormalization) for layer in model.layers):
        raise ValueError("load_fid_weights needs the network with BatchNorm layers (build_fid_inception(), "
                         "not folded); fold it afterwards")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; the FID Inception weights are pytorch-fid's "
                                f"{WEIGHTS_FILE}, from {WEIGHTS_URL} (download it yourself: nothing is "
                                "downloaded here)")
    try:
        state = load_state_dict(path)
    except CheckpointError as e:
        raise WeightsError(f"{e}; expected pytorch-fid's {WEIGHTS_FILE} from {WEIGHTS_URL}") from None
    entries = _torch_entries(model)
    if any(k.startswith("AuxLogits.") for k in state) or "fc.weight" in state and state["fc.weight"].shape == (
            1000, FEATURE_DIM):
        raise _not_fid(path, "it has AuxLogits or a 1000-way fc: torchvision's ImageNet Inception-v3, "
                             "whose weights and pooling differ")
    missing = [k for k in entries if k not in state]
    if missing:
        raise _not_fid(path, f"{len(missing)} of its {len(entries)} weights are missing, e.g. {missing[0]!r}")
    optional = {"fc.weight": FC_SHAPE, "fc.bias": FC_SHAPE[:1]}
    unexpected = [k for k in state if k not in entries and k not in optional
                  and not k.endswith(".bn.num_batches_tracked")]
    if unexpected:
        raise _not_fid(path, f"{len(unexpected)} unexpected entries, e.g. {unexpected[0]!r}")
    for k, shape in [(k, e[2]) for k, e in entries.items()] + [(k, s) for k, s in optional.items() if k in state]:
        if tuple(state[k].shape) != shape:
            raise _not_fid(path, f"{k!r} has shape {tuple(state[k].shape)}, expected {shape}")
    values = {}
    for k, (layer, i, _) in entries.items():
        v = state[k]
        if not np.issubdtype(v.dtype, np.floating):
            raise _not_fid(path, f"{k!r} is {v.dtype}, expected floats")
        if not np.isfinite(v).all():
            raise _not_fid(path, f"{k!r} has non-finite values")
        if v.ndim == 4:
            v = v.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        values.setdefault(layer.name, (layer, {}))[1][i] = v.astype(np.float32)
    for layer, ws in values.values():
        layer.set_weights([ws[i] for i in range(len(ws))])
    return model


def fid_inception(weights, resize_input=True, fold=True):
    """The FID Inception network with pytorch-fid's weights from the file `weights`
    (`pt_inception-2015-12-05-6726825d.pth`), or untrained if `weights` is None (for tests
    and timing only: its features mean nothing). `fold`: return the BatchNorm-folded
    inference form (`fold_batch_norm`), else the layout of pytorch-fid's network."""
    model = build_fid_inception(resize_input=resize_input)
    if weights is not None:
        load_fid_weights(model, weights)
    return fold_batch_norm(model) if fold else model
