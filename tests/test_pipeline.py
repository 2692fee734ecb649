"""The data path for fast hosts: clean exit, the prepared cache, XLA steps."""

import subprocess
import sys
import textwrap

import pytest

EARLY_EXIT = textwrap.dedent("""
    from clade_tf.data import pipeline
    src = pipeline.SyntheticSource(6, 32, 32, length=256, seed=0, use_dist=True)
    it = iter(pipeline.make_dataset(src, 4, 32, 32, use_instance=True, use_dist=True))
    for _ in range(3):
        next(it)
    print("read", flush=True)
""")


@pytest.mark.slow
def test_leaving_a_script_mid_stream_does_not_hang():
    """Before the fix the interpreter hung at exit in the iterator's destructor."""
    out = subprocess.run([sys.executable, "-c", EARLY_EXIT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "read" in out.stdout, out.stderr[-1500:]
