"""The export application: profiling now; SavedModel/TFLite/ONNX export and benchmarks follow."""
