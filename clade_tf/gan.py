"""The CLADE GAN as a `keras.Model`: `compile(g_optimizer=..., d_optimizer=...)`, then `fit`.

Losses follow the official pix2pix model: hinge GAN loss, multi-scale feature
matching (lambda 10), optional VGG19 perceptual loss (lambda 10), KL divergence
(lambda 0.05) in VAE mode. One `train_step` = one generator update, then one
discriminator update, as the official trainer.

Distribution: every per-sample loss is summed over the replica's batch and divided
by the *global* batch size, so the optimizers' cross-replica gradient sum is the
gradient of the global-batch mean. The values returned for logging are the
replica's plain means, which Keras averages over replicas: the logged losses do
not depend on the number of replicas.
"""

import os

import keras
import tensorflow as tf

from clade_tf.config import RunConfig
from clade_tf.layers.ops import instance_edges
from clade_tf.networks import ConvEncoder, Generator, MultiscaleDiscriminator

VGG_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def load_vgg19(path, height, width):
    """VGG19 feature extractor (relu1_1 ... relu5_1) from a local Keras weights file."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"VGG19 weights file not found: {path!r}; pass --vgg-weights with a local copy of "
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (nothing is downloaded)"
        )
    # float32 whatever the global policy: a frozen loss network gains nothing from float16
    base = keras.applications.VGG19(include_top=False, weights=path, input_shape=(height, width, 3))
    outs = [base.get_layer(n).output for n in VGG_LAYERS]
    vgg = keras.Model(base.input, outs, name="vgg19_features")
    vgg.trainable = False
    return vgg


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf (a loss term or a weight): the message names which."""


def non_finite_weights(*models):
    """Paths of the variables of `models` (None skipped) holding NaN or Inf."""
    import numpy as np

    return [v.path for m in models if m is not None for v in m.weights
            if not np.isfinite(np.asarray(v.numpy(), dtype=np.float64)).all()]


def per_sample_mean(x):
    """Mean over all axes but the batch: `[B, ...] -> [B]`."""
    return tf.reduce_mean(tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1]), axis=1)


class CladeGAN(keras.Model):
    """Generator + multiscale discriminator (+ encoder, + VGG) trained adversarially.

    Args:
        generator: a `clade_tf.Generator`.
        discriminator: a `clade_tf.MultiscaleDiscriminator`.
        encoder: a `clade_tf.ConvEncoder` for VAE mode, or None.
        vgg: a frozen VGG19 feature model (see `load_vgg19`), or None.
        lambda_feat, lambda_vgg, lambda_kld: loss weights (official 10, 10, 0.05).
        seed: seed of the train step's random draws (VAE sampling).

    Batches are dicts with `image` ([-1, 1], NHWC), `label` and, as the generator
    needs them, `instance` and `dist`.
    """

    def __init__(self, generator, discriminator, encoder=None, vgg=None, lambda_feat=10.0,
                 lambda_vgg=10.0, lambda_kld=0.05, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.encoder = encoder
        self.vgg = vgg
        self.lambda_feat, self.lambda_vgg, self.lambda_kld = lambda_feat, lambda_vgg, lambda_kld
        self.seed_generator = keras.random.SeedGenerator(seed, name="train_seed")
        if generator.config.use_vae and encoder is None:
            raise ValueError("a VAE-mode generator needs an encoder")

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer

    def build_all(self, batch_shapes=None):
        """Builds every network and both optimizers' slots (call inside the strategy
        scope, before `fit`: Keras 3.15 cannot create a second optimizer's slots
        inside a distributed train step, keras#23085)."""
        g = self.generator
        c = g.config
        g.build()
        self.discriminator.build((None, c.image_height, c.image_width, c.semantic_channels + 3))
        if self.encoder is not None:
            self.encoder.build()
        self.g_optimizer.build(self.g_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.built = True

    @property
    def g_variables(self):
        v = list(self.generator.trainable_variables)
        if self.encoder is not None:
            v += list(self.encoder.trainable_variables)
        return v

    # -- pieces ----------------------------------------------------------------------
    def generator_inputs(self, batch):
        """The batch's maps the generator takes (its config says which)."""
        return {k: batch[k] for k in self.generator.config.data_keys}

    def semantics(self, batch):
        """One-hot label map (+ instance edges): the discriminator's condition."""
        g = self.generator
        cond = {"label": tf.cast(batch["label"], tf.int32)}
        if g.config.use_instance:
            cond["edge"] = instance_edges(batch["instance"])
        return g.segmap(cond)

    def generate(self, batch, training):
        """Fake images, plus (mu, logvar) in VAE mode."""
        inputs = self.generator_inputs(batch)
        mu = logvar = None
        if self.encoder is not None:
            mu, logvar = self.encoder(batch["image"], training=training)
            eps = keras.random.normal(tf.shape(mu), seed=self.seed_generator)
            inputs["z"] = eps * tf.exp(0.5 * logvar) + mu
        return self.generator(inputs, training=training), mu, logvar

    def discriminate(self, seg, fake, real, training):
        """D on fake and real in one batch (shared instance-norm statistics per sample)."""
        seg = tf.cast(seg, fake.dtype)
        both = tf.concat([tf.concat([seg, fake], -1), tf.concat([seg, tf.cast(real, fake.dtype)], -1)], 0)
        outs = self.discriminator(both, training=training)
        n = tf.shape(fake)[0]
        pred_fake = [[t[:n] for t in scale] for scale in outs]
        pred_real = [[t[n:] for t in scale] for scale in outs]
        return pred_fake, pred_real

    def generator_losses(self, batch, training):
        """Per-sample generator loss terms `{name: [B]}` and the fake images."""
        real = batch["image"]
        seg = self.semantics(batch)
        fake, mu, logvar = self.generate(batch, training)
        pred_fake, pred_real = self.discriminate(seg, fake, real, training)
        num_d = len(pred_fake)
        losses = {"G_GAN": tf.add_n([-per_sample_mean(p[-1]) for p in pred_fake]) / num_d}
        feat = []
        for pf, pr in zip(pred_fake, pred_real):
            for f, r in zip(pf[:-1], pr[:-1]):
                feat.append(per_sample_mean(tf.abs(f - tf.stop_gradient(r))))
        losses["G_Feat"] = tf.add_n(feat) * (self.lambda_feat / num_d)
        if self.vgg is not None:
            losses["G_VGG"] = self.vgg_loss(fake, real) * self.lambda_vgg
        if mu is not None:
            kld = -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar), axis=1)
            losses["G_KLD"] = kld * self.lambda_kld
        return losses, fake

    def vgg_loss(self, fake, real):
        # The Keras VGG19 weights are Caffe-style (BGR, mean-subtracted, 0..255).
        # The official code feeds [-1, 1] images to torchvision's VGG unnormalized;
        # we preprocess as the weights expect.
        def prep(x):
            return keras.applications.vgg19.preprocess_input((tf.cast(x, tf.float32) + 1.0) * 127.5)

        fv = self.vgg(prep(fake))
        rv = self.vgg(prep(real))
        return tf.add_n([w * per_sample_mean(tf.abs(a - tf.stop_gradient(b)))
                         for w, a, b in zip(VGG_WEIGHTS, fv, rv)])

    def discriminator_losses(self, batch, training):
        real = batch["image"]
        seg = self.semantics(batch)
        fake, _, _ = self.generate(batch, training)
        fake = tf.stop_gradient(fake)
        pred_fake, pred_real = self.discriminate(seg, fake, real, training)
        num_d = len(pred_fake)
        return {
            "D_Fake": tf.add_n([per_sample_mean(tf.nn.relu(1.0 + p[-1])) for p in pred_fake]) / num_d,
            "D_Real": tf.add_n([per_sample_mean(tf.nn.relu(1.0 - p[-1])) for p in pred_real]) / num_d,
        }

    def _global_scale(self, per_sample):
        """Sum over the replica batch / global batch: the replica's share of the global mean."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        local = tf.cast(tf.shape(per_sample)[0], tf.float32)
        return tf.reduce_sum(per_sample) / (local * replicas)

    # -- steps -----------------------------------------------------------------------
    def generator_gradients(self, batch):
        """`(loss terms, gradients of the generator (+ encoder) variables)`; the gradients
        are of the scaled loss when the optimizer scales it (float16 mixed precision)."""
        with tf.GradientTape() as tape:
            g_terms, _ = self.generator_losses(batch, training=True)
            g_loss = tf.add_n([self._global_scale(v) for v in g_terms.values()])
            # inside the tape: a scale applied after it would cut the gradient (all None)
            g_loss = self.g_optimizer.scale_loss(g_loss)
        return g_terms, tape.gradient(g_loss, self.g_variables)

    def discriminator_gradients(self, batch):
        """`(loss terms, gradients of the discriminator variables)`, as `generator_gradients`."""
        with tf.GradientTape() as tape:
            d_terms = self.discriminator_losses(batch, training=True)
            d_loss = tf.add_n([self._global_scale(v) for v in d_terms.values()])
            d_loss = self.d_optimizer.scale_loss(d_loss)
        return d_terms, tape.gradient(d_loss, self.discriminator.trainable_variables)

    def train_step(self, batch):
        g_terms, grads = self.generator_gradients(batch)
        self.g_optimizer.apply_gradients(zip(grads, self.g_variables))
        d_terms, grads = self.discriminator_gradients(batch)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_variables))
        return self._logs(g_terms, d_terms)

    def test_step(self, batch):
        g_terms, _ = self.generator_losses(batch, training=False)
        d_terms = self.discriminator_losses(batch, training=False)
        return self._logs(g_terms, d_terms)

    def _logs(self, g_terms, d_terms):
        logs = {k: tf.reduce_mean(v) for k, v in {**g_terms, **d_terms}.items()}
        logs["G_total"] = tf.add_n([logs[k] for k in g_terms])
        logs["D_total"] = tf.add_n([logs[k] for k in d_terms])
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces multi-worker logs with `strategy.reduce("MEAN", v, axis=0)`,
            # which needs a leading axis to average over.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 pulls a first batch here and reduces it with
        # `strategy.reduce("MEAN", batch)`, which MultiWorkerMirroredStrategy
        # rejects for a dict batch ("Attempt to convert a value ({'image':
        # PerReplica ...}) to a Tensor"). `build_all()` has built everything.
        if self.built and self.g_optimizer.built and self.d_optimizer.built:
            return
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Constant, then linear decay to 0 from `decay_start` to `total_steps` (official
    `niter` / `niter_decay`, in steps)."""

    def __init__(self, initial, decay_start, total_steps):
        self.initial, self.decay_start, self.total_steps = float(initial), int(decay_start), int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        span = max(self.total_steps - self.decay_start, 1)
        frac = tf.clip_by_value((step - self.decay_start) / span, 0.0, 1.0)
        return self.initial * (1.0 - frac)

    def get_config(self):
        return {"initial": self.initial, "decay_start": self.decay_start,
                "total_steps": self.total_steps}


def make_optimizer(lr, cfg: RunConfig):
    """Adam with the run's betas, learning-rate decay and, under float16, loss scaling."""
    o = cfg.optim
    if o.decay_start is not None:
        lr = LinearDecay(lr, o.decay_start, o.steps)
    opt = keras.optimizers.Adam(lr, beta_1=o.beta1, beta_2=o.beta2)
    if o.mixed_precision == "float16":
        # float16 gradients underflow without it; bfloat16 has float32's range and needs none
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def build_gan(cfg: RunConfig, vgg_size=None):
    """The compiled, fully built `CladeGAN` of a run configuration (call inside the
    distribution strategy's scope). The networks take the run's dtype policy."""
    g = cfg.generator
    policy = cfg.optim.dtype_policy
    generator = Generator(g, name="generator", dtype=policy)
    discriminator = MultiscaleDiscriminator(cfg.discriminator, name="discriminator", dtype=policy)
    encoder = None
    if g.use_vae:
        size = 256 if min(g.image_height, g.image_width) >= 256 else 64
        encoder = ConvEncoder(ngf=g.ngf, z_dim=g.z_dim, input_size=size, name="encoder", dtype=policy)
    vgg = None
    if cfg.optim.vgg_weights:
        vgg = load_vgg19(cfg.optim.vgg_weights, g.image_height, g.image_width)
    o = cfg.optim
    gan = CladeGAN(generator, discriminator, encoder, vgg, o.lambda_feat, o.lambda_vgg, o.lambda_kld,
                   seed=cfg.seed)
    gan.compile(g_optimizer=make_optimizer(o.g_lr, cfg), d_optimizer=make_optimizer(o.d_lr, cfg),
                jit_compile=o.jit_compile)
    gan.build_all()
    return gan
