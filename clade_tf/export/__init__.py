"""Edge export of generators (the library side of `python -m export`): converters,
verification, int8 calibration, the export directory (`ExportDir`) and the runtime that
runs every exported format.

Names load on first use (PEP 562): `clade_tf.export.runtime` and `ExportDir` need no
TensorFlow, the converters and the exporter do.
"""

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "ExportError": "clade_tf.export.converters", "serving_function": "clade_tf.export.converters",
    "write_format": "clade_tf.export.converters",
    "calibration_inputs": "clade_tf.export.exporter", "compare": "clade_tf.export.exporter",
    "example_inputs": "clade_tf.export.exporter", "export": "clade_tf.export.exporter",
    "FORMATS": "clade_tf.export.runtime", "FP32_FORMATS": "clade_tf.export.runtime",
    "load_runner": "clade_tf.export.runtime", "parse_formats": "clade_tf.export.runtime",
    "ExportDir": "clade_tf.export.exportdir", "ExportDirError": "clade_tf.export.exportdir",
    "find_model": "clade_tf.export.exportdir",
}

__all__ = [
    "FORMATS", "FP32_FORMATS", "ExportDir", "ExportDirError", "ExportError", "calibration_inputs", "compare",
    "example_inputs", "export", "find_model", "load_runner", "parse_formats", "serving_function", "write_format",
]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # a submodule (`clade_tf.export.web` after `import clade_tf.export`)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
