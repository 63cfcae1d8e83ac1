"""Transforms for 2-D photographs the pretraining and heatmap pipelines need and MONAI lacks.

* ``RandGrayscale(d)``: with probability ``prob`` replace the three channels by their grey level (the "random
  grayscale" of SimCLR's colour augmentation), Pillow's luminance weights.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from mri_ssl.errors import InputError
from mri_ssl.parameters import as_flag

# Luminance weights of ITU-R BT.601, those of Pillow's "L" mode, so a threshold of 15 means what it meant in the paper.
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` -> ``(..., 1, H, W)`` grey level with Pillow's "L" weights (same units as the input)."""
    weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return (rgb * weights).sum(dim=-3, keepdim=True)


class RandGrayscale(RandomizableTransform):
    """(3, H, W) -> the same shape, every channel the grey level, with probability ``prob``."""

    def __init__(self, prob: float = 0.2):
        super().__init__(prob)

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return image
        if image.shape[0] != 3:
            raise InputError("image", f"random grayscale needs 3 channels, got {image.shape[0]}")
        return luminance(torch.as_tensor(image)).expand_as(image).clone()


class RandGrayscaled(RandomizableTransform, MapTransform):
    def __init__(self, keys: KeysCollection, prob: float = 0.2, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.grayscale = RandGrayscale(prob=1.0)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        result = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return result
        for key in self.key_iterator(result):
            result[key] = self.grayscale(result[key])
        return result


CROP_MODES = ("fixed", "random")


def pretraining_views(method: str = "camcontrast", crop_mode: str = "fixed", crop_size: int = 224,
                      augment_heatmap_geometry: bool = True, rotate_degrees: float = 15.0, zoom: float = 0.25,
                      colour_strength: float = 0.4, grayscale_prob: float = 0.2):
    """The random views of stage-2 pretraining, as a MONAI ``Compose`` on preprocessed dicts (image in 0..1).

    * ``camcontrast`` (fixed crops only: heatmaps belong to fixed crops): the image crop gets flips, rotation up to
      ``rotate_degrees``, zoom up to ``1 + zoom``, colour jitter (per-channel scale and shift of up to
      ``colour_strength / 2``, gamma) and random grayscale. With ``augment_heatmap_geometry`` the heatmap crop gets
      the *same* flip, rotation and zoom (these are relative to the centre, so one draw fits both resolutions) and
      stays aligned with the image; the reference code left heatmaps untouched (False).
    * ``simclr`` / ``supcon``: the image copied to ``view2``; each view augmented independently. With
      ``crop_mode="random"`` each view is first a random ``crop_size`` crop of the whole image (the conventional
      SimCLR setting); with ``fixed`` the inputs are already the five fixed crops.
    """
    from monai.transforms import (
        Compose,
        CopyItemsd,
        RandAdjustContrastd,
        RandFlipd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        RandZoomd,
    )

    if crop_mode not in CROP_MODES:
        raise InputError("crop_mode", f"expected one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
    if method == "camcontrast" and crop_mode != "fixed":
        raise InputError("crop_mode", "camcontrast pretrains on the fixed five crops its heatmaps were made for; "
                                      "random crops are for the simclr / supcon baselines")
    radians = float(rotate_degrees) * np.pi / 180.0

    def geometric(keys):
        modes = ["bilinear"] * len(keys)
        return [RandFlipd(keys, prob=0.5, spatial_axis=1), RandFlipd(keys, prob=0.5, spatial_axis=0),
                RandRotated(keys, range_x=radians, prob=1.0, mode=modes, padding_mode="zeros"),
                RandZoomd(keys, prob=1.0, min_zoom=1.0, max_zoom=1.0 + float(zoom), mode=["area"] * len(keys),
                          keep_size=True)]

    def colour(key):
        return [RandScaleIntensityd(key, factors=colour_strength / 2, prob=0.8, channel_wise=True),
                RandShiftIntensityd(key, offsets=colour_strength / 2, prob=0.8, channel_wise=True),
                RandAdjustContrastd(key, prob=0.5, gamma=(0.7, 1.4)),
                RandGrayscaled(key, prob=grayscale_prob)]

    if method == "camcontrast":
        keys = ["image", "heatmap"] if as_flag(augment_heatmap_geometry, "augment_heatmap_geometry") else ["image"]
        return Compose(geometric(keys) + colour("image"))
    transforms = [CopyItemsd("image", times=1, names="view2")]
    for key in ("image", "view2"):
        if crop_mode == "random":
            transforms.append(RandSpatialCropd(key, roi_size=[int(crop_size)] * 2, random_size=False))
        transforms += geometric([key]) + colour(key)
    return Compose(transforms)
