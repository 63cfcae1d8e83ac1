"""Smooth random deformations that turn one anatomy into many plausible subjects."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mri_ssl.errors import InputError

CONTROL_SPACING_MM = 40.0


def smooth_displacement(shape: tuple[int, int, int], voxel_size_mm: float, std_mm: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """A smooth random displacement field in voxels, shape ``(3, *shape)``.

    Each component is N(0, std_mm^2) on control points about ``CONTROL_SPACING_MM`` apart, upsampled trilinearly:
    brain-sized, smooth warps (no folding for std well below the control spacing) rather than voxel noise.
    """
    if not std_mm >= 0:
        raise InputError("std_mm", f"displacement std must be >= 0 mm, got {std_mm}")
    control = [max(2, round((n - 1) * voxel_size_mm / CONTROL_SPACING_MM) + 1) for n in shape]
    coarse = torch.randn(1, 3, *control, generator=generator) * (std_mm / voxel_size_mm)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]


def warp(volume: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample ``volume`` (``(X, Y, Z)``) at ``x + displacement(x)``; ``mode`` "nearest" for label maps.

    Points pulled from outside the volume take the border value (background at the edge of a head image).
    """
    shape = volume.shape
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0) + displacement
    # grid_sample wants (x, y, z) = (last, middle, first) axis order, normalised to [-1, 1].
    normalised = torch.stack([2.0 * grid[i] / max(shape[i] - 1, 1) - 1.0 for i in range(3)], dim=-1).flip(-1)
    sampled = F.grid_sample(volume[None, None].float(), normalised[None], mode=mode, padding_mode="border",
                            align_corners=True)
    return sampled[0, 0].to(volume.dtype)
