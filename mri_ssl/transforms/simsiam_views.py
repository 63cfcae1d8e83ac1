"""Two augmented views of each 2-D image for SimSiam pretraining, made on the training device after collation.

Per view and item, in this order (the cardiac paper's augmentations: flips, rotations, elastic deformation, plus
the intensity jitter and scale change every SimSiam recipe uses):

1. ``RandFlip`` along each image axis, each with probability ``flip_prob``;
2. ``RandRotate`` by up to ``rotate_range_deg`` degrees (converted to the radians MONAI reads);
3. ``RandZoom`` between ``zoom_range`` (a random-resized-crop-like scale change, same output size);
4. ``Rand2DElastic``: a smooth displacement of ``elastic_magnitude`` pixels on a grid of ``elastic_spacing`` pixels;
5. intensity jitter: ``RandScaleIntensity`` (factor 1 +- ``intensity_scale``), ``RandShiftIntensity``
   (+- ``intensity_shift`` of the image range) and ``RandAdjustContrast`` (gamma in ``gamma_range``).

``SimSiamViewPair(images)`` takes ``(B, C, H, W)`` on any device and returns ``{"view1", "view2"}`` of the same
shape and device; ``set_random_state(seed)`` makes it reproducible (the trainer re-seeds it every epoch).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Rand2DElastic,
    RandAdjustContrast,
    RandFlip,
    Randomizable,
    RandRotate,
    RandScaleIntensity,
    RandShiftIntensity,
    RandZoom,
)

from mri_ssl.errors import InputError


class SimSiamViewPair(Randomizable):
    """Two independently augmented views of every image of a batch (see the module docstring)."""

    def __init__(self, flip_prob: float = 0.5, rotate_range_deg: float = 20.0, rotate_prob: float = 0.8,
                 zoom_range: Sequence[float] = (0.85, 1.15), zoom_prob: float = 0.5,
                 elastic_spacing: float = 20.0, elastic_magnitude: Sequence[float] = (1.0, 3.0),
                 elastic_prob: float = 0.5, intensity_scale: float = 0.2, intensity_shift: float = 0.1,
                 gamma_range: Sequence[float] = (0.7, 1.5), intensity_prob: float = 0.8):
        for name, value in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob), ("zoom_prob", zoom_prob),
                            ("elastic_prob", elastic_prob), ("intensity_prob", intensity_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(name, f"expected a probability in [0, 1], got {value!r}")
        if not 0.0 <= float(rotate_range_deg) <= 180.0:
            raise InputError("rotate_range_deg", f"expected degrees in [0, 180], got {rotate_range_deg!r}")
        if len(zoom_range) != 2 or not 0 < zoom_range[0] <= zoom_range[1]:
            raise InputError("zoom_range", f"expected (min, max) with 0 < min <= max, got {zoom_range!r}")
        angle = math.radians(float(rotate_range_deg))
        self.transform = Compose([
            RandFlip(prob=flip_prob, spatial_axis=0),
            RandFlip(prob=flip_prob, spatial_axis=1),
            RandRotate(range_x=angle, prob=rotate_prob, keep_size=True, padding_mode="zeros"),
            RandZoom(prob=zoom_prob, min_zoom=zoom_range[0], max_zoom=zoom_range[1], keep_size=True,
                     padding_mode="constant"),
            Rand2DElastic(spacing=(elastic_spacing, elastic_spacing), magnitude_range=tuple(elastic_magnitude),
                          prob=elastic_prob, padding_mode="zeros"),
            RandScaleIntensity(factors=intensity_scale, prob=intensity_prob),
            RandShiftIntensity(offsets=intensity_shift, prob=intensity_prob),
            RandAdjustContrast(prob=intensity_prob, gamma=tuple(gamma_range)),
        ])

    def set_random_state(self, seed: int | None = None, state=None) -> "SimSiamViewPair":
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(2 ** 31)))
        return self

    def randomize(self, data=None) -> None:  # every draw happens inside the MONAI transforms
        pass

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        views = [self.transform(image) for image in images]
        views = [v.as_tensor() if isinstance(v, MetaTensor) else torch.as_tensor(v) for v in views]
        return torch.stack(views).to(device=images.device, dtype=images.dtype)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.ndim != 4:
            raise InputError("images", f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
        return {"view1": self._augment(images), "view2": self._augment(images)}
