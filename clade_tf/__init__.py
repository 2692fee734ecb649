"""clade_tf: class-adaptive normalization (CLADE, CLADE-ICPE) and SPADE in Keras 3."""

from clade_tf.config import DiscriminatorConfig, GeneratorConfig
from clade_tf.layers import ClassAdaptiveNorm, SpatiallyAdaptiveNorm
from clade_tf.networks import ConvEncoder, Generator, MultiscaleDiscriminator
from clade_tf.presets import PRESETS, Preset, get_preset

__version__ = "0.1.0"

__all__ = [
    "GeneratorConfig", "DiscriminatorConfig", "Generator", "MultiscaleDiscriminator",
    "ConvEncoder", "ClassAdaptiveNorm", "SpatiallyAdaptiveNorm", "Preset", "PRESETS",
    "get_preset",
]
