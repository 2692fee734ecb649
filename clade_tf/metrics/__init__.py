"""Image-synthesis metrics: FID and KID on the FID Inception network's pool3 features,
mIoU and pixel accuracy of a segmenter on generated images.

    model = fid_inception("pt_inception-2015-12-05-6726825d.pth")  # pytorch-fid's weights, read without torch
    real = extract_features(model, image_folder_dataset("train_images", size=(256, 256)))
    fake = extract_features(model, image_folder_dataset("generated"))
    fid = frechet_distance(*statistics(real), *statistics(fake))
    kid_mean, kid_std = kernel_inception_distance(real, fake)
"""

from clade_tf.metrics.features import extract_features, image_files, image_folder_dataset, load_image
from clade_tf.metrics.fid import fid_from_features, frechet_distance, load_stats, save_stats, statistics
from clade_tf.metrics.inception import (
    FEATURE_DIM,
    WEIGHTS_FILE,
    WEIGHTS_URL,
    FIDPreprocess,
    WeightsError,
    build_fid_inception,
    fid_inception,
    fold_batch_norm,
    load_fid_weights,
)
from clade_tf.metrics.kid import kernel_inception_distance
from clade_tf.metrics.segmentation import ConfusionMatrix, segmentation_scores

__all__ = [
    "FEATURE_DIM",
    "WEIGHTS_FILE",
    "WEIGHTS_URL",
    "ConfusionMatrix",
    "FIDPreprocess",
    "WeightsError",
    "build_fid_inception",
    "extract_features",
    "fid_from_features",
    "fid_inception",
    "fold_batch_norm",
    "frechet_distance",
    "image_files",
    "image_folder_dataset",
    "kernel_inception_distance",
    "load_fid_weights",
    "load_image",
    "load_stats",
    "save_stats",
    "segmentation_scores",
    "statistics",
]
