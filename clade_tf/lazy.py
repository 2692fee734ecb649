"""Package attributes that load on first use (PEP 562), for the packages whose public names
would otherwise import TensorFlow at `import` time: `clade_tf`, `clade_tf.export`,
`clade_tf.data`. Imports the standard library only."""

import importlib


def lazy_attributes(namespace, exports, submodules=False):
    """`(__getattr__, __dir__)` for the package whose globals are `namespace`: a name of
    `exports` (public name -> the module defining it) is imported from its module when first
    read and kept in the package; with `submodules`, any other name is tried as a submodule
    (`clade_tf.presets` after `import clade_tf`)."""
    package = namespace["__name__"]

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value  # later lookups skip this function
            return value
        if submodules:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
