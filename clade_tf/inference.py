"""Inference-only generators: training-time parameterisation folded away.

`fold_for_inference(g)` returns a new `Generator` that computes what `g(...,
training=False)` computes, with:

- spectral normalization folded into plain kernels (`kernel_orig / sigma` with the
  stored u, v), so no power-iteration state or sigma ops remain;
- for CLADE (and the `none` backbone) with batch-type norms, the BatchNorm moving
  statistics folded into the modulation: with `s = sqrt(var + eps)`,
  `norm(x) * gamma[l] + beta[l] = x * (gamma/s)[l] + (beta - mean * gamma/s)[l]`,
  so each CLADE layer is one lookup and one multiply-add;
- no label-range assertion (exported graphs take it as a contract).

CLADE-ICPE keeps its BatchNorm: the mean term is multiplied by `(1 + conv_g(dist))`
but the shift by `(1 + conv_b(dist))`, so it does not fold into beta. SPADE keeps
it too (its gamma is data-dependent). Instance norm has no statistics to fold.
"""

import dataclasses

import numpy as np

from clade_tf.layers.normalization import AffineNorm, ClassAdaptiveNorm, SpatiallyAdaptiveNorm
from clade_tf.networks.generator import Generator


def _bn_stats(norm):
    bn = norm.norm.bn
    mean = bn.moving_mean.numpy().astype(np.float64)
    scale = np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    return mean, scale


def _copy_conv(src, dst):
    dst.kernel.assign(src.effective_kernel(training=False).numpy())
    if src.bias is not None:
        dst.bias.assign(src.bias.numpy())


def _copy_bn(src, dst):
    if src.norm.bn is not None:
        dst.norm.bn.moving_mean.assign(src.norm.bn.moving_mean.numpy())
        dst.norm.bn.moving_variance.assign(src.norm.bn.moving_variance.numpy())


def _fold_affine(src, dst, fold):
    """Copies `gamma`, `beta` (a CLADE table or a per-channel affine), folding the
    BatchNorm statistics into them when `fold` (else copying the statistics)."""
    gamma, beta = src.gamma.numpy().astype(np.float64), src.beta.numpy().astype(np.float64)
    if fold:
        mean, scale = _bn_stats(src)
        gamma, beta = gamma / scale, beta - mean * gamma / scale
    else:
        _copy_bn(src, dst)
    dst.gamma.assign(gamma.astype(np.float32))
    dst.beta.assign(beta.astype(np.float32))


def _fold_norm(src, dst, fold):
    if isinstance(src, ClassAdaptiveNorm):
        _fold_affine(src, dst, fold)
        if src.use_icpe:
            _copy_conv(src.dist_conv_gamma, dst.dist_conv_gamma)
            _copy_conv(src.dist_conv_beta, dst.dist_conv_beta)
        if src.use_instance_edge:
            _copy_conv(src.edge_conv, dst.edge_conv)
    elif isinstance(src, SpatiallyAdaptiveNorm):
        _copy_bn(src, dst)
        for name in ("mlp_shared", "mlp_gamma_conv", "mlp_beta_conv"):
            _copy_conv(getattr(src, name), getattr(dst, name))
    elif isinstance(src, AffineNorm):
        _fold_affine(src, dst, fold)
    else:
        raise TypeError(f"cannot fold {type(src).__name__}")


def fold_for_inference(generator: Generator) -> Generator:
    """A new, folded `Generator` equal to `generator` in inference (see module doc)."""
    generator.build()
    c = generator.config
    fold_bn = c.norm_mode in ("clade", "none") and c.param_free_norm in ("batch", "syncbatch")
    cfg = dataclasses.replace(c, param_free_norm="identity") if fold_bn else c
    out = Generator(cfg, check_labels=False, spectral_norm=False, name=generator.name)
    out.build()
    if c.use_vae:
        out.fc.kernel.assign(generator.fc.kernel.numpy())
        out.fc.bias.assign(generator.fc.bias.numpy())
    else:
        _copy_conv(generator.fc, out.fc)
    for src, dst in zip(generator.blocks, out.blocks):
        for name in ("conv_0", "conv_1") + (("conv_s",) if src.learned_shortcut else ()):
            _copy_conv(getattr(src, name), getattr(dst, name))
        for name in ("norm_0", "norm_1") + (("norm_s",) if src.learned_shortcut else ()):
            _fold_norm(getattr(src, name), getattr(dst, name), fold_bn)
    _copy_conv(generator.conv_img, out.conv_img)
    return out
