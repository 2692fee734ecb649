"""clade_tf: class-adaptive normalization (CLADE, CLADE-ICPE) and SPADE in Keras 3.

The public names below load on first use (PEP 562): importing a TensorFlow-free part
of the library, such as `clade_tf.export.runtime` that runs exported models, does not
import TensorFlow.
"""

from clade_tf.lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "GeneratorConfig": "clade_tf.config", "DiscriminatorConfig": "clade_tf.config",
    "ClassAdaptiveNorm": "clade_tf.layers", "SpatiallyAdaptiveNorm": "clade_tf.layers",
    "ConvEncoder": "clade_tf.networks", "Generator": "clade_tf.networks",
    "MultiscaleDiscriminator": "clade_tf.networks",
    "PRESETS": "clade_tf.presets", "Preset": "clade_tf.presets", "get_preset": "clade_tf.presets",
}

__all__ = [
    "PRESETS", "ClassAdaptiveNorm", "ConvEncoder", "DiscriminatorConfig", "Generator", "GeneratorConfig",
    "MultiscaleDiscriminator", "Preset", "SpatiallyAdaptiveNorm", "get_preset",
]


__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS, submodules=True)
