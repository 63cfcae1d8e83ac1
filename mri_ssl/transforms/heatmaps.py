"""Heatmap post-processing and fixed five-crop of CAMContrast (Yap & Ng, Sections 3.1-3.2).

* ``minmax_normalise``: each map scaled to [0, 1] with an epsilon, so a constant map gives zeros, not NaN.
* ``abnormal_heatmaps``: the abnormal-class CAM, min-max normalised (with epsilon) to [0, 1].
* ``suppress_background``: the foreground mask (image grey level > 15 of 255), reduced to the heatmap's resolution by
  area averaging (the fraction of foreground pixels under each heatmap pixel), multiplied in.
* ``suppress_negative``: heatmaps of normal images set to zero, so every normal image is pulled towards the one
  prototype of an empty heatmap.
* ``five_crop_boxes`` / ``five_crops``: four non-overlapping quadrants (top-left, top-right, bottom-left,
  bottom-right) and the centre crop, each half the height and width; applied to the image and to its heatmap at
  their own resolutions, so crop k of the heatmap covers the same part of the photograph as crop k of the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mri_ssl.errors import InputError
from mri_ssl.transforms.photo import luminance

CROP_POSITIONS = ("tl", "tr", "bl", "br", "c")
MINMAX_EPSILON = 1e-6
FOREGROUND_THRESHOLD = 15.0  # grey level out of 255, for fundus photographs and chest X-rays alike (paper, Fig. 3)


def minmax_normalise(maps: torch.Tensor, epsilon: float = MINMAX_EPSILON) -> torch.Tensor:
    """Each map scaled to [0, 1] over its spatial dims: ``(M - min) / (max - min + epsilon)``.

    ``maps`` is (B, C, *spatial). The epsilon keeps a constant map (max == min) finite: it becomes all zeros instead
    of the 0/0 = NaN of the reference code, which would poison the loss and the heatmap files.
    """
    flat = maps.flatten(2)
    low = flat.min(dim=2).values
    high = flat.max(dim=2).values
    shape = maps.shape[:2] + (1,) * (maps.ndim - 2)
    return (maps - low.view(shape)) / (high - low + float(epsilon)).view(shape)


def five_crop_boxes(height: int, width: int) -> dict[str, tuple[int, int, int, int]]:
    """``{position: (top, left, crop_height, crop_width)}`` with crops of ``height // 2`` x ``width // 2``.

    The quadrants start at 0 and at ``size - crop`` (so an odd size leaves its middle row / column out of the
    quadrants, never out of the image); the centre crop starts at ``(size - crop) // 2``.
    """
    height, width = int(height), int(width)
    if height < 2 or width < 2:
        raise InputError("size", f"five-crop needs at least 2 x 2 pixels, got {height} x {width}")
    crop_h, crop_w = height // 2, width // 2
    bottom, right = height - crop_h, width - crop_w
    return {"tl": (0, 0, crop_h, crop_w), "tr": (0, right, crop_h, crop_w), "bl": (bottom, 0, crop_h, crop_w),
            "br": (bottom, right, crop_h, crop_w), "c": ((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w)}


def five_crops(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The five crops of ``(..., H, W)`` (views, not copies), keyed by ``CROP_POSITIONS``."""
    return {position: tensor[..., top:top + h, left:left + w]
            for position, (top, left, h, w) in five_crop_boxes(*tensor.shape[-2:]).items()}


def foreground_mask(rgb_0_255: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """``(..., 3, H, W)`` image in 0..255 -> ``(..., 1, H, W)`` float mask of grey level > threshold."""
    return (luminance(rgb_0_255) > float(threshold)).to(rgb_0_255.dtype)


def suppress_background(heatmaps: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """``heatmaps`` (B, 1, h, w) times the foreground mask (B, 1, H, W) reduced to (h, w) by area averaging."""
    reduced = F.interpolate(foreground.to(heatmaps.dtype), size=heatmaps.shape[-2:], mode="area")
    return heatmaps * reduced


def suppress_negative(heatmaps: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """Heatmaps of images labelled normal (``abnormal == 0``) set to zero; abnormal ones unchanged."""
    keep = (abnormal.view(-1) != 0).to(heatmaps.dtype).view(-1, *([1] * (heatmaps.ndim - 1)))
    return heatmaps * keep


def abnormal_heatmaps(cams: torch.Tensor, abnormal_class: int = 1, epsilon: float = MINMAX_EPSILON) -> torch.Tensor:
    """Raw CAMs (B, C, h, w) -> the abnormal class's min-max normalised heatmap (B, 1, h, w) in [0, 1]."""
    return minmax_normalise(cams[:, abnormal_class:abnormal_class + 1].float(), epsilon)
