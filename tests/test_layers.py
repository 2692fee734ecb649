"""Layer-level tests: CLADE, ICPE, SPADE, norms, spectral norm, label ops."""

import numpy as np
import pytest
import tensorflow as tf

from clade_tf.layers import (
    AffineNorm,
    ClassAdaptiveNorm,
    Conv2D,
    ParamFreeNorm,
    ResnetBlock,
    SpatiallyAdaptiveNorm,
    downsample_nearest,
    instance_edges,
)
from clade_tf.layers.ops import check_labels
from clade_tf.networks import NLayerDiscriminator
from layer_harness import run_layer_test

RNG_SEED = 0  # tests/conftest.py resets RNG to it before each test
RNG = np.random.default_rng(RNG_SEED)


def randn(*shape):
    return tf.constant(RNG.standard_normal(shape).astype(np.float32))


def randlabel(n, h, w, k):
    return tf.constant(RNG.integers(0, k, size=(n, h, w)).astype(np.int32))


def np_instance_norm(x, eps=1e-5):
    m = x.mean(axis=(1, 2), keepdims=True)
    v = x.var(axis=(1, 2), keepdims=True)
    return (x - m) / np.sqrt(v + eps)


# --- parameter-free norms --------------------------------------------------------------

def test_instance_norm_matches_numpy():
    x = randn(2, 5, 7, 3)
    y = ParamFreeNorm("instance")(x)
    np.testing.assert_allclose(y.numpy(), np_instance_norm(x.numpy()), atol=1e-5)


@pytest.mark.parametrize("kind", ["batch", "syncbatch"])
def test_batch_norm_pytorch_settings(kind):
    norm = ParamFreeNorm(kind)
    x = randn(4, 3, 3, 2)
    y = norm(x, training=True).numpy()
    xn = x.numpy()
    m, v = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (xn - m) / np.sqrt(v + 1e-5), atol=1e-5)
    assert norm.bn.momentum == pytest.approx(0.9)  # PyTorch momentum 0.1
    assert norm.bn.epsilon == pytest.approx(1e-5)
    assert norm.bn.synchronized == (kind == "syncbatch")
    assert not norm.trainable_weights  # no affine
    np.testing.assert_allclose(norm.bn.moving_mean.numpy(), 0.1 * m, atol=1e-6)


def test_param_free_norm_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'group' is not one of syncbatch, batch, instance"):
        ParamFreeNorm("group")


# --- CLADE -----------------------------------------------------------------------------

def make_clade(k=4, c=6, **kw):
    norm = ClassAdaptiveNorm(k, "instance", **kw)
    norm.build((None, 8, 8, c))
    norm.beta.assign(randn(k, c))  # beta starts at zero; make it visible
    return norm


def test_clade_init_as_official():
    norm = ClassAdaptiveNorm(50, "instance")
    norm.build((None, 4, 4, 64))
    g = norm.gamma.numpy()
    assert g.shape == (50, 64) and norm.beta.shape == (50, 64)
    assert g.min() >= 0.0 and g.max() < 1.0 and 0.45 < g.mean() < 0.55  # U[0, 1)
    assert not norm.beta.numpy().any()


def test_clade_equals_per_class_loop():
    k, c = 4, 6
    norm = make_clade(k, c)
    x, label = randn(2, 8, 8, c), randlabel(2, 8, 8, k)
    y = norm(x, {"label": label}).numpy()
    xn = np_instance_norm(x.numpy())
    expected = np.zeros_like(xn)
    lab = label.numpy()
    g, b = norm.gamma.numpy(), norm.beta.numpy()
    for cls in range(k):
        m = lab == cls
        expected[m] = xn[m] * g[cls] + b[cls]
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_gather_equals_one_hot_matmul():
    k, c = 5, 3
    norm = make_clade(k, c)
    label = randlabel(2, 6, 6, k)
    gamma, beta = norm.modulation(label)
    onehot = tf.one_hot(label, k)
    np.testing.assert_allclose(gamma.numpy(), tf.einsum("nhwk,kc->nhwc", onehot, norm.gamma).numpy(), atol=1e-6)
    np.testing.assert_allclose(beta.numpy(), tf.einsum("nhwk,kc->nhwc", onehot, norm.beta).numpy(), atol=1e-6)


def test_icpe_zero_map_equals_clade_and_nonzero_map_modulates():
    k, c = 4, 6
    icpe = make_clade(k, c, use_icpe=True)
    clade = make_clade(k, c)
    clade.gamma.assign(icpe.gamma)
    clade.beta.assign(icpe.beta)
    x, label = randn(1, 8, 8, c), randlabel(1, 8, 8, k)
    zero = tf.zeros([1, 8, 8, 2])
    np.testing.assert_allclose(icpe(x, {"label": label, "dist": zero}).numpy(),
                               clade(x, {"label": label}).numpy(), atol=1e-6)
    # gamma' = gamma[label] * (1 + conv_g(dist)), beta' likewise
    dist = randn(1, 8, 8, 2)
    for conv in (icpe.dist_conv_gamma, icpe.dist_conv_beta):
        conv.kernel.assign(randn(1, 1, 2, 1))
        conv.bias.assign(randn(1))
    wg, bg = icpe.dist_conv_gamma.kernel.numpy()[0, 0], icpe.dist_conv_gamma.bias.numpy()
    wb, bb = icpe.dist_conv_beta.kernel.numpy()[0, 0], icpe.dist_conv_beta.bias.numpy()
    d = dist.numpy()
    lab = label.numpy()
    gam = icpe.gamma.numpy()[lab] * (1 + d @ wg + bg)
    bet = icpe.beta.numpy()[lab] * (1 + d @ wb + bb)
    expected = np_instance_norm(x.numpy()) * gam + bet
    np.testing.assert_allclose(icpe(x, {"label": label, "dist": dist}).numpy(), expected, atol=1e-5)
    assert icpe.count_params() - clade.count_params() == 6  # two 1x1 convs 2->1 with bias


def test_icpe_requires_dist():
    icpe = make_clade(use_icpe=True)
    with pytest.raises(ValueError, match="needs the `dist` map"):
        icpe(randn(1, 8, 8, 6), {"label": randlabel(1, 8, 8, 4)})


def test_clade_instance_edge_channel_appended_after_modulation():
    k, c = 3, 4
    norm = make_clade(k, c, use_instance_edge=True)
    x, label = randn(1, 8, 8, c), randlabel(1, 8, 8, k)
    edge = tf.cast(randlabel(1, 8, 8, 2)[..., None], tf.float32)
    y = norm(x, {"label": label, "edge": edge}).numpy()
    assert y.shape == (1, 8, 8, c + 1)
    plain = make_clade(k, c)
    plain.gamma.assign(norm.gamma)
    plain.beta.assign(norm.beta)
    np.testing.assert_allclose(y[..., :c], plain(x, {"label": label}).numpy(), atol=1e-6)
    w, b = norm.edge_conv.kernel.numpy().item(), norm.edge_conv.bias.numpy().item()
    np.testing.assert_allclose(y[..., c], edge.numpy()[..., 0] * w + b, atol=1e-6)
    with pytest.raises(ValueError, match="needs the `edge` map"):
        norm(x, {"label": label})


# --- SPADE -----------------------------------------------------------------------------

def test_spade_shapes_and_formula():
    k, c = 5, 7
    norm = SpatiallyAdaptiveNorm("instance")
    x = randn(2, 8, 8, c)
    seg = tf.one_hot(randlabel(2, 8, 8, k), k)
    y = norm(x, {"segmap": seg})
    assert y.shape == (2, 8, 8, c)
    assert norm.mlp_shared.kernel.shape == (3, 3, k, 128)
    assert norm.mlp_gamma_conv.kernel.shape == (3, 3, 128, c)
    assert norm.mlp_beta_conv.kernel.shape == (3, 3, 128, c)
    actv = tf.nn.relu(norm.mlp_shared(seg))
    gamma, beta = norm.mlp_gamma_conv(actv), norm.mlp_beta_conv(actv)
    expected = np_instance_norm(x.numpy()) * (1 + gamma.numpy()) + beta.numpy()
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)


def test_affine_norm():
    norm = AffineNorm("instance")
    x = randn(1, 4, 4, 3)
    y = norm(x).numpy()
    np.testing.assert_allclose(
        y, np_instance_norm(x.numpy()) * norm.gamma.numpy() + norm.beta.numpy(), atol=1e-5
    )


# --- Spectral norm ---------------------------------------------------------------------

def test_conv_padding_matches_pytorch_arithmetic():
    for k, s, p, h in [(4, 2, 2, 16), (4, 1, 2, 9), (3, 2, 1, 17), (3, 1, 1, 8), (1, 1, 0, 5)]:
        conv = Conv2D(2, k, strides=s, padding=p)
        y = conv(randn(1, h, h, 3))
        expected = (h + 2 * p - k) // s + 1
        assert y.shape == (1, expected, expected, 2), (k, s, p, h)
        assert conv.compute_output_shape((1, h, h, 3)) == (1, expected, expected, 2)


def test_conv_equals_explicit_zero_padded_correlation():
    conv = Conv2D(2, 3, strides=2, padding=1)
    x = randn(1, 6, 6, 2)
    y = conv(x).numpy()
    w = conv.kernel.numpy()
    xp = np.pad(x.numpy(), [(0, 0), (1, 1), (1, 1), (0, 0)])
    ref = np.zeros((1, 3, 3, 2), np.float32)
    for i in range(3):
        for j in range(3):
            patch = xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            ref[0, i, j] = np.einsum("hwc,hwco->o", patch, w)
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_spectral_norm_sigma_converges_to_largest_singular_value():
    conv = Conv2D(8, 3, padding=1, spectral_norm=True,
                  kernel_initializer="glorot_uniform")
    x = randn(1, 5, 5, 4)
    for _ in range(200):
        conv(x, training=True)
    w = conv.kernel.numpy().reshape(-1, 8)
    top = np.linalg.svd(w, compute_uv=False)[0]
    assert float(conv.sigma(False)) == pytest.approx(top, rel=1e-4)
    # the convolution uses W / sigma: its spectral norm is 1
    eff = conv.effective_kernel(False).numpy().reshape(-1, 8)
    assert np.linalg.svd(eff, compute_uv=False)[0] == pytest.approx(1.0, rel=1e-4)


def test_spectral_norm_power_iteration_is_pytorchs():
    conv = Conv2D(3, 3, padding=1, spectral_norm=True, kernel_initializer="glorot_uniform")
    x = randn(1, 4, 4, 2)
    conv.build(x.shape)
    # PyTorch layout: W [out, in, kh, kw] -> [out, in*kh*kw]; ours [kh*kw*in, out].
    w_t = np.transpose(conv.kernel.numpy(), (3, 2, 0, 1)).reshape(3, -1)
    perm = np.transpose(np.arange(18).reshape(3, 3, 2), (2, 0, 1)).reshape(-1)  # ours -> torch
    u = conv.sn_u.numpy()

    def normalize(a):
        return a / max(np.linalg.norm(a), 1e-12)

    v = normalize(w_t.T @ u)
    u = normalize(w_t @ v)
    sigma = u @ w_t @ v
    y_train = conv(x, training=True).numpy()
    np.testing.assert_allclose(conv.sn_u.numpy(), u, atol=1e-6)
    np.testing.assert_allclose(conv.sn_v.numpy()[perm], v, atol=1e-6)
    # inference reuses the stored u, v: same sigma, no update
    y_eval = conv(x, training=False).numpy()
    np.testing.assert_allclose(conv.sn_u.numpy(), u, atol=1e-6)
    np.testing.assert_allclose(y_eval, y_train, atol=1e-5)
    assert float(conv.sigma(False)) == pytest.approx(sigma, rel=1e-5)
    plain = tf.nn.conv2d(x, conv.kernel / sigma, 1, "SAME") + conv.bias
    np.testing.assert_allclose(y_eval, plain.numpy(), atol=1e-5)


def test_spectral_norm_gradient_matches_finite_difference():
    conv = Conv2D(3, 3, padding=1, spectral_norm=True, dtype="float64",
                  kernel_initializer="glorot_uniform")
    x = tf.constant(RNG.standard_normal((1, 4, 4, 2)))
    r = tf.constant(RNG.standard_normal((1, 4, 4, 3)))
    conv.build(x.shape)
    conv(x, training=True)  # one power iteration, then u, v are frozen (inference)

    def loss():
        return tf.reduce_sum(conv(x, training=False) * r)

    with tf.GradientTape() as tape:
        value = loss()
    grad = tape.gradient(value, conv.kernel).numpy()
    w0 = conv.kernel.numpy()
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 1, 2), (2, 1, 0, 1), (1, 1, 1, 0)]:
        w = w0.copy()
        w[idx] += eps
        conv.kernel.assign(w)
        up = float(loss())
        w[idx] -= 2 * eps
        conv.kernel.assign(w)
        down = float(loss())
        conv.kernel.assign(w0)
        assert grad[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)
    # the gradient flows through sigma: it differs from the gradient with sigma frozen
    sigma = float(conv.sigma(False))
    with tf.GradientTape() as tape:
        frozen = tf.reduce_sum((tf.nn.conv2d(x, conv.kernel / sigma, 1, "SAME") + conv.bias) * r)
    assert not np.allclose(tape.gradient(frozen, conv.kernel).numpy(), grad)


def test_spectral_state_is_not_trainable_and_distributable():
    conv = Conv2D(4, 3, spectral_norm=True)
    conv.build((None, 8, 8, 2))
    names = sorted(w.path.split("/")[-1] for w in conv.trainable_weights)
    assert names == ["bias", "kernel_orig"]
    for v in (conv.sn_u, conv.sn_v):
        assert not v.trainable and v.aggregation == "only_first_replica"
        assert np.linalg.norm(v.numpy()) == pytest.approx(1.0, rel=1e-6)


# --- residual block --------------------------------------------------------------------

@pytest.mark.parametrize(
    "mode,edge,fin,fout,expect",
    [
        ("clade", False, 8, 4, {"conv_0": (3, 3, 8, 4), "conv_1": (3, 3, 4, 4), "conv_s": (1, 1, 8, 4)}),
        ("clade", True, 8, 4, {"conv_0": (3, 3, 9, 4), "conv_1": (3, 3, 5, 4), "conv_s": (1, 1, 9, 4)}),
        ("spade", True, 4, 8, {"conv_0": (3, 3, 4, 4), "conv_1": (3, 3, 4, 8), "conv_s": (1, 1, 4, 8)}),
        ("none", False, 4, 4, {"conv_0": (3, 3, 4, 4), "conv_1": (3, 3, 4, 4)}),
    ],
)
def test_resblock_structure(mode, edge, fin, fout, expect):
    blk = ResnetBlock(fin, fout, norm_mode=mode, num_classes=3, param_free_norm="instance",
                      use_instance_edge=edge)
    x = randn(1, 8, 8, fin)
    label = randlabel(1, 8, 8, 3)
    cond = {"label": label}
    e = tf.cast(randlabel(1, 8, 8, 2)[..., None], tf.float32)
    if edge:
        cond["edge"] = e
    seg = tf.one_hot(label, 3)
    cond["segmap"] = tf.concat([seg, e], -1) if edge else seg
    y = blk(x, cond)
    assert y.shape == (1, 8, 8, fout)
    for name, shape in expect.items():
        assert tuple(getattr(blk, name).kernel.shape) == shape
    assert blk.learned_shortcut == (fin != fout)
    assert all(getattr(blk, n).spectral_norm for n in expect)
    if fin != fout:
        assert blk.conv_s.bias is None


def test_resblock_forward_equals_manual_composition():
    blk = ResnetBlock(4, 6, norm_mode="clade", num_classes=3, param_free_norm="instance")
    x, label = randn(1, 8, 8, 4), randlabel(1, 8, 8, 3)
    y = blk(x, {"label": label})

    def lrelu(t):
        return tf.nn.leaky_relu(t, 0.2)

    cond = {"label": label}
    xs = blk.conv_s(blk.norm_s(x, cond))
    dx = blk.conv_0(lrelu(blk.norm_0(x, cond)))
    dx = blk.conv_1(lrelu(blk.norm_1(dx, cond)))
    np.testing.assert_allclose(y.numpy(), (xs + dx).numpy(), atol=1e-5)


# --- config round trips ----------------------------------------------------------------

@pytest.mark.parametrize(
    "layer,args",
    [
        (Conv2D(4, 3, strides=2, padding=1, use_bias=False, spectral_norm=True), ((1, 8, 8, 2),)),
        (ParamFreeNorm("batch"), ((1, 4, 4, 3),)),
        (ClassAdaptiveNorm(5, "instance", use_instance_edge=True, use_icpe=True), ((1, 4, 4, 3),)),
        (SpatiallyAdaptiveNorm("batch", hidden=16, kernel_size=3), ((1, 4, 4, 3), {"segmap": (1, 4, 4, 5)})),
        (AffineNorm("syncbatch"), ((1, 4, 4, 3),)),
        (ResnetBlock(4, 2, "clade-icpe", 5, "instance", True, 16), ((1, 4, 4, 4),)),
    ],
)
def test_layer_get_config_round_trips(layer, args):
    layer.build(*args)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build(*args)
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in layer.weights]
    assert [w.path.split("/")[-1] for w in clone.weights] == [w.path.split("/")[-1] for w in layer.weights]


# --- label ops -------------------------------------------------------------------------

def test_instance_edges_match_four_neighbour_definition():
    inst = RNG.integers(0, 3, size=(2, 7, 9)).astype(np.int32)
    edge = instance_edges(tf.constant(inst)).numpy()[..., 0]
    ref = np.zeros(inst.shape, bool)
    n, h, w = inst.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                    a, c = i + di, j + dj
                    if 0 <= a < h and 0 <= c < w and inst[b, a, c] != inst[b, i, j]:
                        ref[b, i, j] = True
    np.testing.assert_array_equal(edge, ref.astype(np.float32))


def test_downsample_picks_pytorch_nearest_pixels():
    lab = RNG.integers(0, 100, size=(1, 32, 64)).astype(np.int32)
    for s in (1, 2, 4, 8, 32):
        out = downsample_nearest(tf.constant(lab), s).numpy()
        oh, ow = 32 // s, 64 // s
        # PyTorch nearest: src = floor(dst * in / out)
        rows = np.floor(np.arange(oh) * 32 / oh).astype(int)
        cols = np.floor(np.arange(ow) * 64 / ow).astype(int)
        np.testing.assert_array_equal(out, lab[:, rows][:, :, cols])


@pytest.mark.parametrize("bad", [5, -1, 200])
def test_out_of_range_labels_raise_in_eager_and_graph(bad):
    lab = np.zeros((1, 4, 4), np.int32)
    lab[0, 2, 3] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be in \[0, 4\].*num_classes=5"):
        check_labels(tf.constant(lab), 5)
    fn = tf.function(lambda t: check_labels(t, 5) * 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_classes=5"):
        fn(tf.constant(lab))
    ok = lab.copy()
    ok[0, 2, 3] = 4
    np.testing.assert_array_equal(fn(tf.constant(ok)).numpy(), ok)


# --- Keras layer contract (tests/layer_harness.py) -------------------------------------

def _cond(n=2, h=8, w=8, k=4, edge=False, dist=False, segmap=False):
    label = randlabel(n, h, w, k)
    cond = {"label": label}
    e = tf.cast(randlabel(n, h, w, 2)[..., None], tf.float32)
    if edge:
        cond["edge"] = e
    if dist:
        cond["dist"] = tf.constant(RNG.uniform(-1, 1, (n, h, w, 2)).astype(np.float32))
    if segmap:
        seg = tf.one_hot(label, k)
        cond["segmap"] = tf.concat([seg, e], -1) if edge else seg
    return cond


CONTRACT_CASES = {
    "conv": (Conv2D, dict(filters=4, kernel_size=3, padding=1), lambda: (randn(2, 8, 8, 3),)),
    "conv-spectral": (Conv2D, dict(filters=4, kernel_size=4, strides=2, padding=2, use_bias=False,
                                   spectral_norm=True), lambda: (randn(2, 8, 8, 3),)),
    "pfn-instance": (ParamFreeNorm, dict(kind="instance"), lambda: (randn(2, 8, 8, 3),)),
    "pfn-batch": (ParamFreeNorm, dict(kind="batch"), lambda: (randn(2, 8, 8, 3),)),
    "pfn-syncbatch": (ParamFreeNorm, dict(kind="syncbatch"), lambda: (randn(2, 8, 8, 3),)),
    "clade": (ClassAdaptiveNorm, dict(num_classes=4, param_free_norm="batch"),
              lambda: (randn(2, 8, 8, 6), _cond())),
    "clade-icpe": (ClassAdaptiveNorm, dict(num_classes=4, param_free_norm="instance", use_icpe=True),
                   lambda: (randn(2, 8, 8, 6), _cond(dist=True))),
    "clade-edge": (ClassAdaptiveNorm, dict(num_classes=4, param_free_norm="syncbatch",
                                           use_instance_edge=True),
                   lambda: (randn(2, 8, 8, 6), _cond(edge=True))),
    "spade": (SpatiallyAdaptiveNorm, dict(param_free_norm="instance", hidden=8),
              lambda: (randn(2, 8, 8, 6), _cond(edge=True, segmap=True))),
    "affine": (AffineNorm, dict(param_free_norm="batch"), lambda: (randn(2, 8, 8, 6), _cond())),
    "block-clade-shortcut": (ResnetBlock, dict(fin=6, fout=4, norm_mode="clade", num_classes=4,
                                               param_free_norm="syncbatch", use_instance_edge=True),
                             lambda: (randn(2, 8, 8, 6), _cond(edge=True))),
    "block-clade": (ResnetBlock, dict(fin=4, fout=4, norm_mode="clade", num_classes=4,
                                      param_free_norm="instance"),
                    lambda: (randn(2, 8, 8, 4), _cond())),
    "block-icpe": (ResnetBlock, dict(fin=4, fout=6, norm_mode="clade-icpe", num_classes=4,
                                     param_free_norm="batch"),
                   lambda: (randn(2, 8, 8, 4), _cond(dist=True))),
    "block-spade": (ResnetBlock, dict(fin=6, fout=4, norm_mode="spade", num_classes=4,
                                      param_free_norm="instance", use_instance_edge=True,
                                      spade_hidden=8),
                    lambda: (randn(2, 8, 8, 6), _cond(edge=True, segmap=True))),
    "block-none": (ResnetBlock, dict(fin=6, fout=4, norm_mode="none", param_free_norm="batch"),
                   lambda: (randn(2, 8, 8, 6), _cond())),
    "patch-discriminator": (NLayerDiscriminator, dict(n_layers=3, ndf=4),
                            lambda: (randn(2, 16, 16, 5),)),
}


# (trainable, non-trainable) weights, counted from the definitions: a conv has kernel (+ bias),
# spectral norm adds u and v; BatchNorm (no affine here) has moving mean and variance; a CLADE
# norm has gamma and beta tables, ICPE two 1x1 convs with bias, the edge one more; SPADE three
# convs with bias; a block's convs are spectral, its shortcut conv has no bias.
WEIGHT_COUNTS = {
    "conv": (2, 0),
    "conv-spectral": (1, 2),
    "pfn-instance": (0, 0),
    "pfn-batch": (0, 2),
    "pfn-syncbatch": (0, 2),
    "clade": (2, 2),
    "clade-icpe": (2 + 4, 0),
    "clade-edge": (2 + 2, 2),  # gamma, beta, edge conv; BN statistics
    "spade": (6, 0),
    "affine": (2, 2),
    # norm_0, norm_1, norm_s; conv_0, conv_1; conv_s (kernel; u, v)
    "block-clade-shortcut": (3 * 4 + 2 * 2 + 1, 3 * 2 + 2 * 2 + 2),
    "block-clade": (2 * 2 + 2 * 2, 2 * 2),
    "block-icpe": (3 * 6 + 2 * 2 + 1, 3 * 2 + 2 * 2 + 2),
    "block-spade": (3 * 6 + 2 * 2 + 1, 2 * 2 + 2),
    "block-none": (3 * 2 + 2 * 2 + 1, 3 * 2 + 2 * 2 + 2),
    # model0 (kernel, bias), model1-2 spectral without bias (kernel; u, v), model3 (kernel, bias)
    "patch-discriminator": (2 + 2 * 1 + 2, 2 * 2),
}


@pytest.mark.parametrize("case", list(CONTRACT_CASES))
def test_layer_contract(case):
    cls, kwargs, inputs = CONTRACT_CASES[case]
    run_layer_test(cls, kwargs, inputs(), expected_num_weights=WEIGHT_COUNTS[case])
