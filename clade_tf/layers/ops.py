"""Label-map operations shared by the networks (all TFLite/ONNX friendly)."""

import tensorflow as tf


def check_labels(label, num_classes):
    """Raises `InvalidArgumentError` (eager and graph) if any label is outside [0, num_classes).

    `tf.gather` on a GPU silently returns zeros for out-of-range indices, which
    would hide a label-map / `num_classes` mismatch; this makes it loud.
    """
    lo = tf.reduce_min(label)
    hi = tf.reduce_max(label)
    ok = tf.logical_and(lo >= 0, hi < num_classes)
    msg = (
        f"label map values must be in [0, {num_classes - 1}] for a model with "
        f"num_classes={num_classes} (don't-care included); found min/max:"
    )
    with tf.control_dependencies([tf.debugging.Assert(ok, [msg, lo, hi], summarize=2)]):
        return tf.identity(label)


def instance_edges(instance):
    """Instance-boundary map: 1.0 where any 4-neighbour has another instance id.

    Args:
        instance: int `[N, H, W]` instance ids.
    Returns:
        float32 `[N, H, W, 1]`.
    """
    inst = instance
    dx = tf.not_equal(inst[:, :, 1:], inst[:, :, :-1])  # [N, H, W-1]
    dy = tf.not_equal(inst[:, 1:, :], inst[:, :-1, :])  # [N, H-1, W]
    dx = tf.cast(dx, tf.float32)
    dy = tf.cast(dy, tf.float32)
    # A horizontal difference marks both pixels; same for vertical.
    edge = tf.maximum(
        tf.maximum(tf.pad(dx, [[0, 0], [0, 0], [1, 0]]), tf.pad(dx, [[0, 0], [0, 0], [0, 1]])),
        tf.maximum(tf.pad(dy, [[0, 0], [1, 0], [0, 0]]), tf.pad(dy, [[0, 0], [0, 1], [0, 0]])),
    )
    return edge[..., None]


def downsample_nearest(x, stride):
    """Nearest downsampling by an integer stride: `x[:, ::s, ::s]`.

    This is exactly the pixel PyTorch's `F.interpolate(mode='nearest')` picks for
    an integer ratio (source index = floor(dst * s)), and unlike
    `tf.image.resize` it works on int32 label maps in TFLite.
    """
    if stride == 1:
        return x
    return x[:, ::stride, ::stride]
