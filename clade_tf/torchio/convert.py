"""Load official (PyTorch) state dicts, given as `{name: numpy array}`, into our networks.

Names are those of the official tzt101/CLADE (NVlabs/SPADE) modules, e.g.
`head_0.conv_0.weight_orig`, `head_0.norm_0.class_specified_affine.weight`,
`discriminator_0.model1.0.0.weight_u`, `fc_mu.weight`. Layout conversions:
conv weights OIHW -> HWIO; Linear `(out, in)` -> `(in, out)`; spectral-norm `v`
from PyTorch's `(in, kh, kw)` flattening to ours `(kh, kw, in)`; `u` unchanged.
`clade_tf.torchio.reader.load_state_dict` reads the `.pth` files themselves (no torch either).
"""

import numpy as np

from clade_tf.layers.conv import Conv2D
from clade_tf.layers.normalization import (
    AffineNorm,
    ClassAdaptiveNorm,
    ParamFreeNorm,
    SpatiallyAdaptiveNorm,
)

# Buffers PyTorch keeps that have no counterpart here (Keras does not count batches).
IGNORED_SUFFIXES = (".num_batches_tracked",)


class _Loader:
    """Collects every problem (missing, unexpected, mis-shaped keys) before raising."""

    def __init__(self, state_dict):
        self.sd = {k: np.asarray(v) for k, v in state_dict.items()}
        self.used = set()
        self.missing = []
        self.mismatched = []

    def take(self, key):
        if key not in self.sd:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.sd[key]

    def assign(self, var, value, key):
        if value is None:
            return
        value = np.asarray(value, dtype=np.float32)
        if tuple(var.shape) != value.shape:
            # name the checkpoint's own (PyTorch-layout) shape
            self.mismatched.append(f"{key} {self.sd[key].shape} does not fit ours {tuple(var.shape)}")
            return
        var.assign(value)

    def conv(self, layer: Conv2D, prefix):
        name = prefix + (".weight_orig" if layer.spectral_norm else ".weight")
        w = self.take(name)
        if w is not None and w.ndim != 4:
            self.mismatched.append(f"{name} {w.shape} does not fit ours {tuple(layer.kernel.shape)} (not a conv)")
            w = None
        self.assign(layer.kernel, None if w is None else np.transpose(w, (2, 3, 1, 0)), name)
        if layer.spectral_norm:
            self.assign(layer.sn_u, self.take(prefix + ".weight_u"), prefix + ".weight_u")
            v = self.take(prefix + ".weight_v")
            if v is not None and w is not None and v.size == np.prod(w.shape[1:]):
                cin, kh, kw = w.shape[1:]
                v = v.reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)
            self.assign(layer.sn_v, v, prefix + ".weight_v")
        if layer.bias is not None:
            self.assign(layer.bias, self.take(prefix + ".bias"), prefix + ".bias")

    def dense(self, layer, prefix):
        w = self.take(prefix + ".weight")
        self.assign(layer.kernel, None if w is None else w.T, prefix + ".weight")
        self.assign(layer.bias, self.take(prefix + ".bias"), prefix + ".bias")

    def param_free(self, norm: ParamFreeNorm, prefix):
        if norm.bn is not None:
            self.assign(norm.bn.moving_mean, self.take(prefix + ".running_mean"), prefix + ".running_mean")
            self.assign(norm.bn.moving_variance, self.take(prefix + ".running_var"), prefix + ".running_var")

    def norm(self, norm, prefix):
        self.param_free(norm.norm, prefix + ".param_free_norm")
        if isinstance(norm, ClassAdaptiveNorm):
            aff = prefix + ".class_specified_affine"
            self.assign(norm.gamma, self.take(aff + ".weight"), aff + ".weight")
            self.assign(norm.beta, self.take(aff + ".bias"), aff + ".bias")
            if norm.use_icpe:
                self.conv(norm.dist_conv_gamma, aff + ".dist_conv_w")
                self.conv(norm.dist_conv_beta, aff + ".dist_conv_b")
            if norm.use_instance_edge:
                self.conv(norm.edge_conv, prefix + ".inst_conv")
        elif isinstance(norm, SpatiallyAdaptiveNorm):
            self.conv(norm.mlp_shared, prefix + ".mlp_shared.0")
            self.conv(norm.mlp_gamma_conv, prefix + ".mlp_gamma")
            self.conv(norm.mlp_beta_conv, prefix + ".mlp_beta")
        elif isinstance(norm, AffineNorm):
            # A ValueError like every other misfit: the network's norm mode, not an argument's type, is wrong.
            raise ValueError(  # noqa: TRY004
                "norm mode 'none' has no official counterpart")

    def finish(self, strict):
        """Raises one error naming every problem; returns the unused keys when not strict."""
        left = sorted(k for k in self.sd if k not in self.used and not k.endswith(IGNORED_SUFFIXES))
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing: {', '.join(self.missing[:10])}"
                            + (" ..." if len(self.missing) > 10 else ""))
        if self.mismatched:
            problems.append(f"{len(self.mismatched)} shape mismatches: {'; '.join(self.mismatched[:10])}"
                            + (" ..." if len(self.mismatched) > 10 else ""))
        if strict and left:
            problems.append(f"{len(left)} unexpected: {', '.join(left[:10])}" + (" ..." if len(left) > 10 else ""))
        if problems:
            raise ValueError("official weights do not fit this architecture: " + "; ".join(problems))
        return left


def load_generator(generator, state_dict, strict=True):
    """Loads an official `SPADEGenerator` state dict into a built `Generator`.

    Returns the list of unused keys (empty when `strict`, which raises instead).
    """
    generator.build()
    ld = _Loader(state_dict)
    if generator.config.use_vae:
        ld.dense(generator.fc, "fc")
    else:
        ld.conv(generator.fc, "fc")
    for blk in generator.blocks:
        name = blk.name
        for conv in ("conv_0", "conv_1") + (("conv_s",) if blk.learned_shortcut else ()):
            ld.conv(getattr(blk, conv), f"{name}.{conv}")
        for norm in ("norm_0", "norm_1") + (("norm_s",) if blk.learned_shortcut else ()):
            ld.norm(getattr(blk, norm), f"{name}.{norm}")
    ld.conv(generator.conv_img, "conv_img")
    return ld.finish(strict)


def load_discriminator(discriminator, state_dict, in_channels, strict=True):
    """Loads an official `MultiscaleDiscriminator` state dict."""
    discriminator.build((None, None, None, in_channels))
    ld = _Loader(state_dict)
    for i, d in enumerate(discriminator.scales):
        last = len(d.convs) - 1
        for n, conv in enumerate(d.convs):
            prefix = f"discriminator_{i}.model{n}.0" + (".0" if 0 < n < last else "")
            ld.conv(conv, prefix)
    return ld.finish(strict)


def load_encoder(encoder, state_dict, strict=True):
    """Loads an official `ConvEncoder` state dict."""
    encoder.build()
    ld = _Loader(state_dict)
    for i, conv in enumerate(encoder.convs):
        ld.conv(conv, f"layer{i + 1}.0")
    ld.dense(encoder.fc_mu, "fc_mu")
    ld.dense(encoder.fc_var, "fc_var")
    return ld.finish(strict)


def inspect_generator_state_dict(sd):
    """What an official generator state dict says about its architecture: a dict with
    `norm_mode`, `use_vae`, `ngf`, `most` (7 upsamplings), `batch_norm` (BatchNorm
    running statistics present), and `num_classes` + `use_instance` (CLADE) or
    `semantic_channels` (SPADE), with `classes_from` naming the key they were read from."""
    if "fc.weight" not in sd or "head_0.conv_0.weight_orig" not in sd:
        raise ValueError("this is not an official SPADEGenerator state dict "
                         "(no fc.weight / head_0.conv_0.weight_orig)")
    fc = sd["fc.weight"]
    ngf = fc.shape[0] // 16 if fc.ndim == 4 else sd["head_0.conv_0.weight_orig"].shape[1] // 16
    info = {"use_vae": fc.ndim == 2, "ngf": int(ngf)}
    if "head_0.norm_0.class_specified_affine.weight" in sd:
        table = sd["head_0.norm_0.class_specified_affine.weight"]
        icpe = "head_0.norm_0.class_specified_affine.dist_conv_w.weight" in sd
        info["norm_mode"] = "clade-icpe" if icpe else "clade"
        info["num_classes"] = int(table.shape[0])
        info["use_instance"] = "head_0.norm_0.inst_conv.weight" in sd
        info["classes_from"] = f"head_0.norm_0.class_specified_affine.weight {tuple(table.shape)}"
    elif "head_0.norm_0.mlp_shared.0.weight" in sd:
        shared = sd["head_0.norm_0.mlp_shared.0.weight"]
        info["norm_mode"] = "spade"
        info["semantic_channels"] = int(shared.shape[1])
        info["classes_from"] = f"head_0.norm_0.mlp_shared.0.weight {tuple(shared.shape)}"
    else:
        raise ValueError("cannot tell the norm mode: no CLADE tables and no SPADE mlp_shared")
    info["most"] = "up_4.conv_0.weight_orig" in sd
    # BatchNorm keeps running statistics; InstanceNorm (affine=False) has none
    info["batch_norm"] = "head_0.norm_0.param_free_norm.running_mean" in sd
    return info
