"""What every test module shares: the tiny synthetic preset and a fresh random state per test."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np
import pytest

from clade_tf import presets

# The `synthetic` preset at 32 x 32, ngf = ndf = 8, batch 4 (the real one: 64 x 64, ngf 16,
# ndf 32, batch 8): a training step in well under a second on two cores. Modules import it
# (`from conftest import TINY`) and `.replace(...)` what their tests need otherwise.
TINY = presets.SYNTHETIC.replace(image_height=32, image_width=32, load_size=32, ngf=8, ndf=8, batch_size=4)


@pytest.fixture
def tiny_preset(monkeypatch):
    """`--dataset synthetic` (the CLIs look presets up by name) resolves to `TINY` in this test."""
    monkeypatch.setitem(presets.PRESETS, "synthetic", TINY)
    return TINY


@pytest.fixture(autouse=True)
def _fresh_random_state(request):
    """Each test starts from the same random state, whichever tests ran before it in its worker:
    Python's, NumPy's, TensorFlow's and Keras' global seeds, and the module's `RNG` generator
    where the module names its seed `RNG_SEED`."""
    keras.utils.set_random_seed(0)
    seed = getattr(request.module, "RNG_SEED", None)
    if seed is not None:
        request.module.RNG = np.random.default_rng(seed)
