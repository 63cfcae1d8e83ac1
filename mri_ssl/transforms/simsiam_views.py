"""Two augmented views of each 2-D image for SimSiam pretraining, made on the training device after collation.

The cardiac paper's augmentations are flips, rotations and elastic deformation; SimSiam recipes add a scale change
and intensity jitter. Per view and item, each with its own probability:

1. a flip along each image axis (``flip_prob``);
2. one resampling (bilinear, zeros outside) for all the geometry: a rotation by up to ``rotate_range_deg`` degrees
   (``rotate_prob``), a zoom in ``zoom_range`` (``zoom_prob``, a random-resized-crop-like scale change at the same
   output size) and an elastic displacement (``elastic_prob``): Gaussian noise of ``elastic_magnitude`` pixels on a
   control grid every ``elastic_spacing`` pixels, upsampled bicubically to a smooth field, as MONAI's
   ``Rand2DElastic`` draws it;
3. intensity jitter (``intensity_prob`` each): a scale ``1 + U(-s, s)``, a shift ``U(-o, o)`` times the image's
   range, and a gamma in ``gamma_range`` applied to the min-max normalised image (MONAI's ``RandAdjustContrast``).

Why not MONAI's per-image transforms: they run one image at a time (measured 35 ms per 84 x 84 view on one CPU core,
which made augmentation, not the ViT, the cost of a SimSiam step). Here the whole batch is one ``grid_sample`` on
the training device; the maths is the same. ``set_random_state(seed)`` makes the views reproducible (the trainer
re-seeds every epoch).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable

from mri_ssl.errors import InputError


class SimSiamViewPair(Randomizable):
    """Two independently augmented views of every image of a batch ``(B, C, H, W)`` (see the module docstring).

    ``__call__(images)`` returns ``{"view1", "view2"}``, each of the input's shape, device and dtype.
    """

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
        if len(gamma_range) != 2 or not 0 < gamma_range[0] <= gamma_range[1]:
            raise InputError("gamma_range", f"expected (min, max) with 0 < min <= max, got {gamma_range!r}")
        if not float(elastic_spacing) >= 2 or len(elastic_magnitude) != 2 or min(elastic_magnitude) < 0:
            raise InputError("elastic_spacing", f"need spacing >= 2 pixels and a (min, max) magnitude >= 0, got "
                                                f"{elastic_spacing!r}, {elastic_magnitude!r}")
        self.flip_prob, self.rotate_prob, self.zoom_prob = float(flip_prob), float(rotate_prob), float(zoom_prob)
        self.rotate_range = math.radians(float(rotate_range_deg))
        self.zoom_range = tuple(float(z) for z in zoom_range)
        self.elastic_prob, self.elastic_spacing = float(elastic_prob), float(elastic_spacing)
        self.elastic_magnitude = tuple(float(m) for m in elastic_magnitude)
        self.intensity_prob, self.intensity_scale = float(intensity_prob), float(intensity_scale)
        self.intensity_shift, self.gamma_range = float(intensity_shift), tuple(float(g) for g in gamma_range)
        self.generator = torch.Generator().manual_seed(0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None
                         ) -> "SimSiamViewPair":
        super().set_random_state(seed, state)
        self.generator.manual_seed(int(self.R.randint(2 ** 31)))
        return self

    def randomize(self, data=None) -> None:  # the draws happen per batch in __call__, from self.generator
        pass

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _chance(self, n: int, prob: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) < prob

    def _sampling_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised sampling coordinates ``(B, H, W, 2)``: flips, rotation, zoom and the elastic field."""
        b, _, h, w = images.shape
        flip_x = torch.where(self._chance(b, self.flip_prob), -1.0, 1.0)
        flip_y = torch.where(self._chance(b, self.flip_prob), -1.0, 1.0)
        angle = torch.where(self._chance(b, self.rotate_prob), self._uniform(b, -self.rotate_range,
                                                                             self.rotate_range), 0.0)
        zoom = torch.where(self._chance(b, self.zoom_prob), self._uniform(b, *self.zoom_range), 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # output -> input: zoom in = sample less
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x * w / h, cos * flip_y
        grid = F.affine_grid(theta.float(), [b, 1, h, w], align_corners=False)
        elastic = self._chance(b, self.elastic_prob)
        magnitude = torch.where(elastic, self._uniform(b, *self.elastic_magnitude), 0.0).float()
        control = (max(2, int(round(h / self.elastic_spacing)) + 1), max(2, int(round(w / self.elastic_spacing)) + 1))
        noise = torch.randn(b, 2, *control, generator=self.generator)
        field = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True)  # pixels, smooth
        scale = torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)  # pixels -> normalised coordinates
        grid = grid + (field * scale * magnitude.view(b, 1, 1, 1)).permute(0, 2, 3, 1)
        return grid.to(images.device)

    def _intensity(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        shape = (b,) + (1,) * (images.ndim - 1)

        def draw(low, high):
            return self._uniform(b, low, high).float().view(shape).to(images.device)

        def chance():
            return self._chance(b, self.intensity_prob).view(shape).to(images.device)

        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        span = (high - low).clamp_min(1e-8)
        gamma = draw(*self.gamma_range)
        contrasted = ((images - low) / span).clamp(0, 1).pow(gamma) * span + low
        images = torch.where(chance(), contrasted, images)
        images = torch.where(chance(), images * (1.0 + draw(-self.intensity_scale, self.intensity_scale)), images)
        images = torch.where(chance(), images + draw(-self.intensity_shift, self.intensity_shift) * span, images)
        return images

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        dtype = images.dtype
        warped = F.grid_sample(images.float(), self._sampling_grid(images), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        return self._intensity(warped).to(dtype)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise InputError("images", f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
        return {"view1": self._augment(images), "view2": self._augment(images)}
