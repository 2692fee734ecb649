from clade_tf.layers.conv import Conv2D
from clade_tf.layers.normalization import (
    AffineNorm,
    ClassAdaptiveNorm,
    ConditionalNorm,
    ParamFreeNorm,
    SpatiallyAdaptiveNorm,
)
from clade_tf.layers.ops import check_labels, downsample_nearest, instance_edges
from clade_tf.layers.resblock import ResnetBlock

__all__ = [
    "AffineNorm",
    "ClassAdaptiveNorm",
    "ConditionalNorm",
    "Conv2D",
    "ParamFreeNorm",
    "ResnetBlock",
    "SpatiallyAdaptiveNorm",
    "check_labels",
    "downsample_nearest",
    "instance_edges",
]
