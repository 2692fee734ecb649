"""Edge export of generators (the library side of `python -m export`): converters,
verification, int8 calibration and the runtime that runs every exported format."""

from clade_tf.export.converters import ExportError, serving_function, write_format
from clade_tf.export.exporter import calibration_inputs, compare, example_inputs, export
from clade_tf.export.runtime import FORMATS, FP32_FORMATS, load_runner, parse_formats

__all__ = [
    "ExportError", "FORMATS", "FP32_FORMATS", "calibration_inputs", "compare", "example_inputs",
    "export", "load_runner", "parse_formats", "serving_function", "write_format",
]
