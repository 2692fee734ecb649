"""Edge export of generators (the library side of `python -m export`): converters,
verification, int8 calibration, the export directory (`ExportDir`) and the runtime that
runs every exported format.

Names load on first use (PEP 562): `clade_tf.export.runtime` and `ExportDir` need no
TensorFlow, the converters and the exporter do.
"""

from clade_tf.lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS, submodules=True)
