"""The export application: `python -m export` (export, verified), `export.infer` (run an
exported model on label PNGs), `export.from_torch` (import official PyTorch checkpoints).
The work is done by `clade_tf.export`; these modules parse flags and print."""
