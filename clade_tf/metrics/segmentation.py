"""mIoU and pixel accuracy of a semantic segmenter's predictions against label maps.

Conventions:
- pixels whose label is `ignore_index` (don't-care) count nowhere;
- a class's IoU is TP / (TP + FP + FN) over the whole set (one confusion matrix
  accumulated over all batches, not a mean of per-image scores);
- the mIoU averages the IoU of the classes present in the labels or in the
  predictions; a class absent from both has no IoU (NaN) and is left out. A class
  predicted but never labelled has IoU 0 and counts. (This is DRN's per-class IoU with
  `nanmean`; CSAIL's ADE20K evaluation counts a class absent from both as 0 instead,
  which differs only when some class never occurs in the whole set.)
- pixel accuracy is correct / counted pixels.
Labels other than `ignore_index` outside [0, num_classes), and predictions outside
it, are errors rather than silently dropped: they mean a class-count mismatch.
"""

import numpy as np


class ConfusionMatrix:
    """A `[num_classes, num_classes]` count matrix (rows: label, columns: prediction)."""

    def __init__(self, num_classes, ignore_index=None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes={num_classes}, expected >= 1")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, prediction, label):
        """Adds the pixels of integer maps `prediction` and `label` (same shape, any batch layout)."""
        p, t = np.asarray(prediction), np.asarray(label)
        if p.shape != t.shape:
            raise ValueError(f"prediction has shape {p.shape} and label {t.shape}, expected the same")
        for what, a in (("prediction", p), ("label", t)):
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{what} is {a.dtype}, expected integer class ids")
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        p, t = p.ravel().astype(np.int64), t.ravel().astype(np.int64)
        n = self.num_classes
        for what, a in (("label", t), ("prediction", p)):
            if a.size and (a.min() < 0 or a.max() >= n):
                extra = "" if what == "prediction" or self.ignore_index is None else \
                    f" (don't-care {self.ignore_index} excluded)"
                raise ValueError(f"{what} values span [{a.min()}, {a.max()}], expected [0, {n - 1}] for "
                                 f"num_classes={n}{extra}")
        self.matrix += np.bincount(n * t + p, minlength=n * n).reshape(n, n)
        return self

    def iou(self):
        """Per-class IoU, NaN for a class absent from both labels and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def mean_iou(self):
        iou = self.iou()
        if np.isnan(iou).all():
            raise ValueError("mIoU of no pixels: every pixel was don't-care or nothing was added")
        return float(np.nanmean(iou))

    def pixel_accuracy(self):
        total = self.matrix.sum()
        if total == 0:
            raise ValueError("pixel accuracy of no pixels: every pixel was don't-care or nothing was added")
        return float(np.trace(self.matrix) / total)


def segmentation_scores(segmenter, batches, num_classes, ignore_index=None):
    """mIoU, pixel accuracy and per-class IoU of `segmenter` on `(images, labels)` batches.

    `segmenter(images)` returns class ids `[B, H, W]` or scores `[B, H, W, num_classes]`
    (argmax taken) at the labels' size; `batches` is an iterable (e.g. a `tf.data.Dataset`)
    of `(images, labels)` with labels `[B, H, W]`. Returns
    `{"miou": float, "pixel_accuracy": float, "iou": [num_classes] (NaN: class absent)}`.
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    for images, labels in batches:
        pred = np.asarray(segmenter(images))
        labels = np.asarray(labels)
        if pred.ndim == labels.ndim + 1:
            if pred.shape[-1] != num_classes:
                raise ValueError(f"the segmenter gives {pred.shape[-1]} class scores, expected {num_classes}")
            pred = pred.argmax(-1)
        cm.update(pred, labels)
    return {"miou": cm.mean_iou(), "pixel_accuracy": cm.pixel_accuracy(), "iou": cm.iou()}
