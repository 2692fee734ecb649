"""Initializers matching the official code's `init_weights('xavier', 0.02)`."""

import keras


def xavier_normal(gain=0.02):
    """PyTorch's `xavier_normal_(w, gain)`: N(0, gain^2 * 2 / (fan_in + fan_out)), untruncated.

    The official networks call `init_weights(init_type='xavier', gain=0.02)` on every
    Conv/Linear module after construction (biases set to 0), so this is the
    initializer of every conv and dense kernel in the generator, discriminator and
    encoder. Keras' fan computation for `[kh, kw, in, out]` kernels equals PyTorch's.
    """
    return keras.initializers.VarianceScaling(
        scale=gain**2, mode="fan_avg", distribution="untruncated_normal"
    )
