"""Dice and HD95 in millimetres for label maps, with an explicit policy for structures that are empty.

MONAI computes the surface distances (``monai.metrics.compute_hausdorff_distance``); this module adds what its
handlers leave out: distances in mm (the voxel spacing is passed through), a fixed answer for empty structures instead
of NaN / inf with a warning, and one flat row of numbers per case for a report.

HD95 is MONAI's definition: the boundary of a mask is its voxels that a face-connected binary erosion removes (voxels
outside the volume count as background); for each boundary voxel of one mask the distance in mm between voxel
centres to the nearest boundary voxel of the other mask; the 95th percentile of those distances in each direction
(``torch.quantile``, linear interpolation); and the larger of the two directed percentiles. Other tools differ: medpy's
``hd95`` takes the 95th percentile of both directions pooled, and DeepMind's ``surface-distance`` weights surface
elements by area, so numbers from them are not interchangeable with these.

Empty-structure policy (``score_structure``):

=====================  ======  ===================  ============================================================
structure is in        Dice    HD95 (mm)            status
=====================  ======  ===================  ============================================================
label and prediction   Dice    HD95                 ``ok``
label only             0       volume diagonal      ``missed``
prediction only        0       volume diagonal      ``false_positive``
neither                NaN     NaN                  ``absent``: left out of means, counted in the report
=====================  ======  ===================  ============================================================

The volume diagonal (``max_distance_mm``) is the largest distance two voxels of the volume can have, so a missed or
hallucinated structure scores no better than the worst possible overlap.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from monai.utils import convert_to_numpy

from mri_ssl.errors import InputError

STATUS_OK, STATUS_MISSED, STATUS_FALSE_POSITIVE, STATUS_ABSENT = "ok", "missed", "false_positive", "absent"
BACKGROUND = 0


@dataclass(frozen=True)
class StructureScore:
    """The scores of one structure (class) in one case.

    Attributes:
        dice: Dice overlap in [0, 1]; NaN when the structure is absent from both label and prediction.
        hd95_mm: 95th-percentile Hausdorff distance in millimetres; the volume diagonal when the structure is missed
            or only predicted; NaN when absent from both.
        status: one of ``STATUS_OK``, ``STATUS_MISSED``, ``STATUS_FALSE_POSITIVE``, ``STATUS_ABSENT``.
    """

    dice: float
    hd95_mm: float
    status: str


def _to_numpy(array) -> np.ndarray:
    # MetaTensors, tensors on any device and array-likes alike.
    return np.asarray(convert_to_numpy(array.detach() if isinstance(array, torch.Tensor) else array))


def _checked_spacing_mm(spacing_mm: Sequence[float], spatial_dims: int | None) -> tuple[float, ...]:
    """Voxel sizes as plain floats (MONAI's ``prepare_spacing`` accepts only Python numbers), validated.

    ``spatial_dims`` None accepts 2 or 3 values.
    """
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise InputError("spacing_mm", f"expected one voxel size in mm per spatial axis, got {spacing_mm!r}") \
            from None
    if spatial_dims is None and len(spacing) not in (2, 3):
        raise InputError("spacing_mm", f"expected 2 or 3 voxel sizes in mm (one per spatial axis), got {spacing}")
    if spatial_dims is not None and len(spacing) != spatial_dims:
        raise InputError("spacing_mm", f"expected {spatial_dims} voxel sizes in mm (one per spatial axis), "
                                       f"got {len(spacing)}: {spacing}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError("spacing_mm", f"voxel sizes must be positive and finite, got {spacing}")
    return spacing


def _checked_mask_pair(prediction_mask, label_mask) -> tuple[np.ndarray, np.ndarray]:
    prediction = _to_numpy(prediction_mask).astype(bool, copy=False)
    label = _to_numpy(label_mask).astype(bool, copy=False)
    if prediction.shape != label.shape:
        raise InputError("prediction_mask", f"shape {prediction.shape} differs from the label mask's {label.shape}")
    if prediction.ndim not in (2, 3):
        raise InputError("prediction_mask", f"expected a 2-D or 3-D spatial mask (no batch or channel axis), "
                                            f"got shape {prediction.shape}")
    return prediction, label


def max_distance_mm(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """The largest distance between two voxel centres of a volume: its diagonal, ``sqrt(sum(((n - 1) * s) ** 2))``.

    Args:
        shape: spatial size in voxels.
        spacing_mm: voxel size along each axis in mm.
    """
    spacing = _checked_spacing_mm(spacing_mm, len(shape))
    return float(math.sqrt(sum(((int(n) - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def dice_score(prediction_mask, label_mask) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two boolean masks; NaN when both are empty."""
    prediction, label = _checked_mask_pair(prediction_mask, label_mask)
    total = int(prediction.sum()) + int(label.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, label).sum()) / total


def hd95_mm(prediction_mask, label_mask, spacing_mm: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm between two non-empty masks (MONAI's definition, see the module).

    Args:
        prediction_mask, label_mask: boolean (or 0/1) arrays or tensors of equal spatial shape, 2-D or 3-D, no batch
            or channel axis. Both must hold at least one voxel; ``score_structure`` handles empty ones.
        spacing_mm: voxel size along each axis in mm.

    Raises ``InputError`` for different shapes, an empty mask, or a spacing of the wrong length or not positive.
    """
    prediction, label = _checked_mask_pair(prediction_mask, label_mask)
    spacing = _checked_spacing_mm(spacing_mm, prediction.ndim)
    for name, mask in (("prediction_mask", prediction), ("label_mask", label)):
        if not mask.any():
            raise InputError(name, "is empty; HD95 is undefined (score_structure applies the empty-structure policy)")
    # MONAI wants one-hot (batch, channel, *spatial); one channel, which is the structure, not background.
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument to get_mask_edges and warns about it on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(prediction)[None, None], torch.from_numpy(label)[None, None],
            include_background=True, percentile=95, spacing=list(spacing),
        )
    return float(distance.reshape(-1)[0])


def bounding_box(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of ``masks``, grown by ``margin`` voxels and clipped to the volume.

    The masks must share a shape and not all be empty.
    """
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        occupied = np.flatnonzero(union.any(axis=other_axes))
        start = max(int(occupied[0]) - margin, 0)
        stop = min(int(occupied[-1]) + 1 + margin, union.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def score_structure(prediction_mask, label_mask, spacing_mm: Sequence[float]) -> StructureScore:
    """Dice and HD95 (mm) of one structure with the empty-structure policy of this module.

    Args:
        prediction_mask, label_mask: boolean masks of equal spatial shape (2-D or 3-D), numpy or torch.
        spacing_mm: voxel size along each axis in mm.
    """
    prediction, label = _checked_mask_pair(prediction_mask, label_mask)
    spacing = _checked_spacing_mm(spacing_mm, prediction.ndim)
    in_prediction, in_label = bool(prediction.any()), bool(label.any())
    if not in_prediction and not in_label:
        return StructureScore(float("nan"), float("nan"), STATUS_ABSENT)
    if not in_prediction or not in_label:
        status = STATUS_MISSED if in_label else STATUS_FALSE_POSITIVE
        return StructureScore(0.0, max_distance_mm(prediction.shape, spacing), status)
    # Distances are invariant to translation, so a box around both masks gives the same HD95 as the whole volume at a
    # fraction of the cost. The 1-voxel margin keeps every mask voxel off the box's faces (unless the box is at the
    # volume's edge, where it was already), so the erosion that finds the boundary sees the same neighbours.
    box = bounding_box(prediction, label, margin=1)
    prediction, label = prediction[box], label[box]
    return StructureScore(dice_score(prediction, label), hd95_mm(prediction, label, spacing), STATUS_OK)


def _label_map(array, name: str, spatial_dims: int) -> np.ndarray:
    """An integer label map with spatial axes only; a leading singleton channel is dropped."""
    labels = _to_numpy(array)
    if labels.ndim == spatial_dims + 1 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != spatial_dims:
        raise InputError(name, f"expected a {spatial_dims}-D label map (as many axes as spacing_mm has values, "
                               f"optionally with a leading channel of 1), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(labels, np.round(labels)):
            raise InputError(name, f"expected integer class labels, got {labels.dtype} values that are not whole "
                                   "numbers (take the argmax of probabilities first)")
        labels = labels.astype(np.int64)
    return labels


def _present_values(labels: np.ndarray) -> list[int]:
    lowest, highest = int(labels.min()), int(labels.max())
    if lowest >= 0 and highest < 65536:
        # A histogram is linear in the voxel count; np.unique sorts, several times slower on a whole brain.
        return [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=highest + 1))]
    return [int(v) for v in np.unique(labels)]


def _check_values(labels: np.ndarray, name: str, known_values: set[int]) -> None:
    unexpected = [v for v in _present_values(labels) if v not in known_values]
    if unexpected:
        raise InputError(name, f"holds values {unexpected} that are not classes; expected only "
                               f"{sorted(known_values)} (background 0 and the keys of class_names)")


def _checked_class_names(class_names: Mapping[int, str]) -> dict[int, str]:
    try:
        names = {int(value): str(name) for value, name in class_names.items()}
    except (AttributeError, TypeError, ValueError):
        raise InputError("class_names", f"expected a mapping of integer label value to name, got {class_names!r}") \
            from None
    foreground = [name for value, name in names.items() if value != BACKGROUND]
    if not foreground:
        raise InputError("class_names", f"no foreground class to score (class {BACKGROUND} is background): {names}")
    if len(set(foreground)) != len(foreground) or not all(foreground):
        raise InputError("class_names", f"class names must be unique and non-empty (they name columns): {names}")
    return names


def segmentation_case_scores(prediction, label, class_names: Mapping[int, str],
                             spacing_mm: Sequence[float]) -> dict:
    """One case's row of scores: Dice, HD95 (mm) and status per foreground class, their means and status counts.

    Args:
        prediction, label: integer label maps of equal shape, numpy or torch, spatial axes only or with a leading
            channel of 1. Float maps of whole numbers are accepted.
        class_names: label value -> name, e.g. ``{0: "background", 1: "gm", 2: "wm", 3: "csf"}``. Value 0 is
            background and never scored (it need not be listed).
        spacing_mm: voxel size along each spatial axis in mm; its length sets the number of spatial axes.

    Returns a flat dict: for each foreground class in ascending label order ``dice_<name>``, ``hd95_mm_<name>``,
    ``status_<name>``; then ``dice_mean`` and ``hd95_mm_mean`` over the classes that were scored (status not
    ``absent``; NaN when none was), ``missed`` and ``false_positive`` (how many classes had that status).

    Raises ``InputError("label", ...)`` when the shapes differ or the label holds values that are not classes
    (``"prediction"`` likewise for the prediction), and for a bad ``spacing_mm`` or ``class_names``.
    """
    names = _checked_class_names(class_names)
    spacing = _checked_spacing_mm(spacing_mm, None)
    spatial_dims = len(spacing)
    label_map = _label_map(label, "label", spatial_dims)
    prediction_map = _label_map(prediction, "prediction", spatial_dims)
    if prediction_map.shape != label_map.shape:
        raise InputError("label", f"shape {label_map.shape} differs from the prediction's {prediction_map.shape}")
    known_values = set(names) | {BACKGROUND}
    _check_values(label_map, "label", known_values)
    _check_values(prediction_map, "prediction", known_values)

    row: dict = {}
    scored: list[StructureScore] = []
    for value in sorted(v for v in names if v != BACKGROUND):
        name = names[value]
        score = score_structure(prediction_map == value, label_map == value, spacing)
        row[f"dice_{name}"], row[f"hd95_mm_{name}"], row[f"status_{name}"] = score.dice, score.hd95_mm, score.status
        if score.status != STATUS_ABSENT:
            scored.append(score)
    row["dice_mean"] = float(np.mean([s.dice for s in scored])) if scored else float("nan")
    row["hd95_mm_mean"] = float(np.mean([s.hd95_mm for s in scored])) if scored else float("nan")
    row["missed"] = sum(s.status == STATUS_MISSED for s in scored)
    row["false_positive"] = sum(s.status == STATUS_FALSE_POSITIVE for s in scored)
    return row
