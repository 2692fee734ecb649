r"""Benchmarks of the CLADE generator and GAN (numbers for benchmarks/BENCHMARKS.md,
not tests). Each command prints a table, or one JSON object
with `--json`; `--help` shows every option with its default.

    python -m benchmarks.profile --preset ade20k [--use-vae] [--json]
        parameters, conv/dense MACs and modulation elementwise ops per norm mode
    python -m benchmarks.latency --preset ade20k --norm none,clade,clade-icpe,spade \
        --formats tflite-fp32,tflite-int8-dynamic,onnx --threads 2 --rounds 3 --repeats 5 \
        [--memory-limit-mb MB] [--json] [--plot FILE]
        latency and memory of the exported generator per norm mode and format
    python -m benchmarks.ops --preset ade20k --norm none,clade --threads 2 [--json]
        per-op profiles: tflite-fp32 (perf) and onnx (onnxruntime's profiler)
    python -m benchmarks.variants --preset ade20k --variants base,fused,shared,betas --rounds 5
        the CLADE lookup variants tried for the exported layer, verified and timed
    python -m benchmarks.train_step --preset synthetic --modes clade,spade \
        [--precisions float32,float16,bfloat16] [--json]
        optimizer steps per second of the training step per norm mode and precision
    python -m benchmarks.fid_features [--weights PTH] [--torch-python PY] [--rounds N] [--json]
        images/s of the FID Inception features (500 images at 256x256), ours and pytorch-fid's

Exports and timings run in guarded child processes (`benchmarks.guard`): each is
killed above a memory limit and its row reports so. The benchmarks use the library
`clade_tf` only (the export, its runtime, the GAN and the profiler).
"""
