"""Additive Gaussian noise that keeps the noise itself, the target of a noise-predicting denoiser.

The denoising task of the sequence-invariant paper adds Gaussian noise of standard deviation 0.2 to z-scored clean
images; the network predicts the noise, which is subtracted. MONAI's ``RandGaussianNoise`` draws the standard
deviation itself at random (``sample_std``) and discards the noise, so it cannot serve as the target. The reference
code also left its test noise unseeded, so test scores changed from run to run; here ``per_case_seed`` makes the
noise of each case a function of its file name only (independent of batch order, workers and device).
"""

from __future__ import annotations

import math
import zlib
from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from mri_ssl.errors import InputError

__all__ = ["AddGaussianNoised", "case_seed"]


def case_seed(base_seed: int, name: str) -> int:
    """A seed for one case: ``base_seed`` mixed with the CRC-32 of its name (stable across runs and platforms)."""
    return (int(base_seed) * 1_000_003 + zlib.crc32(str(name).encode("utf-8"))) % (2 ** 63)


class AddGaussianNoised(Randomizable, MapTransform):
    """Replace ``keys`` by ``clean + N(0, sigma^2)`` and store the noise (and optionally the clean image).

    Args:
        keys: images to corrupt, channel-first tensors in the units of ``sigma`` (z-scored for the paper's 0.2).
        sigma: noise standard deviation, > 0.
        noise_key: where the added noise goes (the denoiser's training target); with several keys, the key's name
            is appended (``f"{noise_key}_{key}"``).
        clean_key: where a copy of the clean image goes, or None not to keep it.
        per_case_seed: None draws fresh noise every call (training). An int seeds each case's noise from this seed
            and the image's source file name (``meta["filename_or_obj"]``), so evaluation noise is reproducible.
    """

    def __init__(self, keys: KeysCollection, sigma: float = 0.2, noise_key: str = "label", clean_key: str | None = None,
                 per_case_seed: int | None = None, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise InputError("sigma", f"noise standard deviation must be a positive number, got {sigma!r}")
        self.sigma = float(sigma)
        self.noise_key = noise_key
        self.clean_key = clean_key
        self.per_case_seed = per_case_seed

    def _generator(self, image: torch.Tensor) -> torch.Generator:
        if self.per_case_seed is None:
            seed = int(self.R.randint(0, 2 ** 31 - 1))
        else:
            name = getattr(image, "meta", {}).get("filename_or_obj")
            if not name:
                raise InputError("image", "per-case seeded noise needs the image's file name in its metadata "
                                          "(load it with LoadImaged)")
            seed = case_seed(self.per_case_seed, name)
        return torch.Generator().manual_seed(seed)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            clean = d[key]
            if not torch.is_floating_point(torch.as_tensor(clean)):
                raise InputError(str(key), f"expected a floating-point image, got {torch.as_tensor(clean).dtype}")
            # Noise is drawn on the CPU from a CPU generator so it is the same on every device.
            noise = torch.randn(clean.shape, generator=self._generator(clean), dtype=torch.float32)
            noise = (noise * self.sigma).to(device=clean.device, dtype=clean.dtype)
            suffix = f"_{key}" if len(keys) > 1 else ""
            if self.clean_key is not None:
                d[f"{self.clean_key}{suffix}"] = clean.clone()
            d[f"{self.noise_key}{suffix}"] = noise
            d[key] = clean + noise
        return d


def denoised_in_input_units(noisy_z: torch.Tensor, predicted_noise_z: torch.Tensor,
                            original: torch.Tensor) -> torch.Tensor:
    """The denoised image ``noisy - predicted noise``, mapped from z-scores back to the intensities of ``original``.

    ``original`` is the image before ``NormalizeIntensity`` (which z-scores with the population standard deviation),
    so the result is in the units of the input file.
    """
    original = torch.as_tensor(original).float()
    mean, std = original.mean(), original.std(unbiased=False)
    return (noisy_z - predicted_noise_z) * std + mean
