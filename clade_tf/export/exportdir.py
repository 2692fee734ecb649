"""An export directory of `python -m export`: its report, its contract and its model files.

    exp = ExportDir("exports/synthetic-clade")
    exp.inputs, exp.height, exp.width, exp.num_classes, exp.dontcare_class
    exp.file("onnx"), exp.formats(), exp.fp32_model()

The one reader (and writer, `write_report`) of `report.json`; the file name of each format
comes from `clade_tf.export.runtime.FORMATS`. Imports no TensorFlow, like the runtime.
"""

import json
import os

from clade_tf.export.runtime import FORMATS

REPORT = "report.json"
# the fp32 model a caller gets from a whole export: the file a phone gets first
FP32_PREFERENCE = ("tflite-fp32", "onnx", "saved_model")
_GENERATOR_KEYS = ("num_classes", "image_height", "image_width")


class ExportDirError(ValueError):
    """Not a readable export directory; the message names the path and what was expected."""


def is_export(path):
    """Whether `path` is a directory holding a `report.json` (what `python -m export` writes)."""
    return os.path.isfile(os.path.join(os.fspath(path), REPORT))


def write_report(directory, report):
    """Writes `report` as `directory/report.json`."""
    with open(os.path.join(directory, REPORT), "w") as f:
        json.dump(report, f, indent=2)


def read_report(path):
    """The dict of the report file `path`; `ExportDirError` naming it unless it is a report."""
    try:
        with open(path) as f:
            report = json.load(f)
        gen, inputs = report["generator"], report["contract"]["inputs"]
        missing = [k for k in _GENERATOR_KEYS if k not in gen]
        if missing or not isinstance(inputs, list):
            raise KeyError(missing[0] if missing else "contract.inputs")
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, missing keys, a list instead of a dict
        raise ExportDirError(f"{path}: not an export report ({type(e).__name__}: {e})") from None
    return report


class ExportDir:
    """A directory written by `python -m export`, read once. `flag` names the command-line
    option the path came from, in error messages."""

    def __init__(self, path, flag="--export"):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ExportDirError(f"{flag} {path} not found")
        if not os.path.isdir(path):
            raise ExportDirError(f"{flag} {path} is a file; name the export directory of python -m export")
        if not is_export(path):
            raise ExportDirError(f"{flag} {path}: no {REPORT}; name a directory written by python -m export")
        self.path = path
        self.report = read_report(os.path.join(path, REPORT))

    @property
    def contract(self):
        return self.report["contract"]

    @property
    def generator(self):
        """The generator's config dict (`GeneratorConfig.to_dict()`)."""
        return self.report["generator"]

    @property
    def inputs(self):
        """The model's input names, in order (`label`, and `instance`, `dist`, `z` as it uses them)."""
        return list(self.contract["inputs"])

    @property
    def height(self):
        return self.generator["image_height"]

    @property
    def width(self):
        return self.generator["image_width"]

    @property
    def num_classes(self):
        """Classes the model knows, don't-care included."""
        return self.generator["num_classes"]

    @property
    def z_dim(self):
        return self.generator.get("z_dim", 256)

    @property
    def dontcare_class(self):
        """The class CLADE-ICPE's positional maps leave at zero, as training did (None: none).
        Recorded by the export from `DataConfig.dontcare_class`."""
        return self.contract.get("dontcare_class")

    def file(self, kind):
        """The path of format `kind` (a `FORMATS` name) in this export, present or not."""
        return os.path.join(self.path, FORMATS[kind])

    def formats(self):
        """The formats whose file is present, in `FORMATS` order."""
        return [k for k in FORMATS if os.path.exists(self.file(k))]

    def fp32_model(self, flag="--model"):
        """The path of the export's fp32 model: model_fp32.tflite, else model.onnx, else saved_model/."""
        for kind in FP32_PREFERENCE:
            if os.path.exists(self.file(kind)):
                return self.file(kind)
        raise ExportDirError(f"{flag} {self.path}: the export holds no fp32 model "
                             f"({', '.join(FORMATS[k] for k in FP32_PREFERENCE)}); name one of its model files")


def find_model(path, flag="--model"):
    """`(model path, ExportDir or None)` for a command line's `path`: an export directory
    (its fp32 model), or a model file / SavedModel directory, with the export it sits in
    (None when no report.json is beside it: a model copied out of its export)."""
    path = os.fspath(path).rstrip("/") or "/"
    if not os.path.exists(path):
        raise ExportDirError(f"{flag} {path} not found")
    if os.path.isdir(path) and is_export(path):
        export = ExportDir(path, flag)
        return export.fp32_model(flag), export
    parent = os.path.dirname(os.path.abspath(path))
    return path, (ExportDir(parent, flag) if is_export(parent) else None)
