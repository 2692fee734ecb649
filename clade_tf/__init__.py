"""clade_tf: class-adaptive normalization (CLADE, CLADE-ICPE) and SPADE in Keras 3.

The public names below load on first use (PEP 562): importing a TensorFlow-free part
of the library, such as `clade_tf.export.runtime` that runs exported models, does not
import TensorFlow.
"""

import importlib

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


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # a submodule (`clade_tf.presets` after `import clade_tf`)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
