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
    "Conv2D", "AffineNorm", "ClassAdaptiveNorm", "ConditionalNorm", "ParamFreeNorm", "SpatiallyAdaptiveNorm",
    "ResnetBlock", "check_labels", "downsample_nearest", "instance_edges",
]
