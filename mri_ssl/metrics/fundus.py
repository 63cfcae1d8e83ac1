"""Metrics of the CAMContrast experiments that MONAI lacks: CAM localisation, Dice, AUC-PR.

* Pointing game (Zhang et al. 2016): a hit when the CAM's maximum falls inside the lesion mask, or within a
  tolerance of it (Zhang et al. allow 15 pixels at PASCAL / COCO sizes); ``pointing_distance`` is the distance from
  the maximum to the nearest lesion pixel, from which the hit at any tolerance follows.
* CAM IoU: intersection over union of ``CAM >= threshold`` (CAM min-max normalised to [0, 1]) with the mask.
* Average precision (AUC-PR): ``sum_k (R_k - R_{k-1}) P_k`` over descending scores, ties taken together, the
  step-wise area that scikit-learn's ``average_precision_score`` computes (no interpolation).
Dice is ``2|A n B| / (|A| + |B|)``; ROC-AUC, F1 and accuracy are in ``mri_ssl.metrics.classification``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mri_ssl.errors import InputError


def pointing_distance(cam: np.ndarray, mask: np.ndarray) -> float:
    """Euclidean distance in pixels from the (first) maximum of ``cam`` (H, W) to the nearest pixel of ``mask``
    (H, W, non-empty): 0 when the maximum lies inside the mask."""
    cam, mask = np.asarray(cam), np.asarray(mask).astype(bool)
    if cam.shape != mask.shape:
        raise InputError("cam", f"shape {cam.shape} differs from the mask's {mask.shape}")
    if not mask.any():
        raise InputError("mask", "the pointing game needs a non-empty lesion mask")
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    if mask[row, col]:
        return 0.0
    return float(ndimage.distance_transform_edt(~mask)[row, col])


def check_pointing_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float, or ``InputError`` naming ``pointing_tolerance`` unless it is a distance >= 0."""
    if not float(tolerance) >= 0.0:
        raise InputError("pointing_tolerance", f"must be a distance >= 0 in pixels, got {tolerance!r}")
    return float(tolerance)


def pointing_game_hit(cam: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> bool:
    """True when the (first) maximum of ``cam`` (H, W) lies inside ``mask`` (H, W; non-empty), or at most
    ``tolerance`` pixels from it."""
    return pointing_distance(cam, mask) <= check_pointing_tolerance(tolerance)


def cam_iou(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``cam >= threshold`` with ``mask``; the CAM should be min-max normalised to [0, 1]. Both empty: 1."""
    predicted = np.asarray(cam) >= float(threshold)
    mask = np.asarray(mask).astype(bool)
    union = np.logical_or(predicted, mask).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, mask).sum() / union)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; both empty gives 1 (nothing to find, nothing found)."""
    predicted, truth = np.asarray(predicted).astype(bool), np.asarray(truth).astype(bool)
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(predicted, truth).sum() / total)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall curve as step-wise average precision; NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth).astype(bool).ravel()
    positives = truth.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    # Thresholds at each distinct score: the last index of every run of equal scores.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(truth)[last]
    precision = true_positives / (last + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
