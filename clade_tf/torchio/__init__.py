"""Official PyTorch checkpoints, read and converted without torch.

    sd = load_state_dict("latest_net_G.pth")      # {name: numpy array}; zip or legacy format
    info = inspect_generator_state_dict(sd)       # norm mode, ngf, classes, ... read off the weights
    load_generator(generator, sd)                 # into a built `clade_tf.Generator`

`reader` parses the files (its restricted unpickler runs no code from them), `convert`
maps the official module names and layouts onto our networks.
"""

from clade_tf.torchio.convert import (
    IGNORED_SUFFIXES,
    inspect_generator_state_dict,
    load_discriminator,
    load_encoder,
    load_generator,
)
from clade_tf.torchio.reader import CheckpointError, load_state_dict

__all__ = [
    "IGNORED_SUFFIXES",
    "CheckpointError",
    "inspect_generator_state_dict",
    "load_discriminator",
    "load_encoder",
    "load_generator",
    "load_state_dict",
]
