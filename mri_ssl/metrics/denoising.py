"""PSNR in decibels for denoising, with the peak made explicit.

PSNR depends on the peak it is measured against, and papers differ: the data range of the clean image is the usual
choice, while the sequence-invariant paper's reference code measured z-scored images against a peak of 1.0. Both are
reported so numbers can be compared with that paper's table and with everyone else's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.utils import convert_to_numpy

from mri_ssl.errors import InputError


def _as_float64(array, name: str) -> np.ndarray:
    values = np.asarray(convert_to_numpy(array.detach() if isinstance(array, torch.Tensor) else array),
                        dtype=np.float64)
    if values.size == 0:
        raise InputError(name, "is empty")
    if not np.all(np.isfinite(values)):
        raise InputError(name, f"holds {int(np.size(values) - np.isfinite(values).sum())} NaN or infinite voxels")
    return values


def _checked_pair(estimate, reference) -> tuple[np.ndarray, np.ndarray]:
    estimate, reference = _as_float64(estimate, "estimate"), _as_float64(reference, "reference")
    if estimate.shape != reference.shape:
        raise InputError("estimate", f"shape {estimate.shape} differs from the reference's {reference.shape}")
    return estimate, reference


def _psnr_from_mse(mse: float, peak: float) -> float:
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(peak) - 10.0 * math.log10(mse)


def _checked_peak(peak: float | None, reference: np.ndarray) -> float:
    if peak is None:
        peak = float(reference.max() - reference.min())
        if peak <= 0.0:
            raise InputError("reference", "is constant, so its data range (the default peak) is 0; pass peak=")
        return peak
    peak = float(peak)
    if not math.isfinite(peak) or peak <= 0.0:
        raise InputError("peak", f"must be positive and finite, got {peak}")
    return peak


# Computed here rather than with monai.metrics.PSNRMetric: PSNRMetric takes a fixed max_val for every image, works in
# the inputs' dtype (a float32 mean over ~10^7 squared errors loses digits) and wants a batch axis. Here the default
# peak is each reference's own data range and the sums are float64.
def psnr_db(estimate, reference, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio ``20 log10(peak / sqrt(MSE))`` in dB over the whole array.

    Args:
        estimate: the denoised image, any shape (numpy or torch).
        reference: the clean image, same shape.
        peak: the signal peak, in the images' units; None uses the reference's data range (max - min).

    Returns +inf when the images are identical. Raises ``InputError`` for different shapes, NaN or infinite voxels,
    a non-positive peak, or a constant reference with ``peak=None``.
    """
    estimate, reference = _checked_pair(estimate, reference)
    peak = _checked_peak(peak, reference)
    return _psnr_from_mse(float(np.mean((estimate - reference) ** 2)), peak)


def denoising_case_scores(denoised, clean) -> dict:
    """One case's row of denoising scores.

    Returns ``{"psnr_db": PSNR with peak = data range of clean, "psnr_peak1_db": PSNR with peak 1.0 (the reference
    code's convention on z-scored data, comparable with the paper's table), "mse": mean squared error in squared image
    units}``.
    """
    denoised, clean = _checked_pair(denoised, clean)
    mse = float(np.mean((denoised - clean) ** 2))
    return {
        "psnr_db": _psnr_from_mse(mse, _checked_peak(None, clean)),
        "psnr_peak1_db": _psnr_from_mse(mse, 1.0),
        "mse": mse,
    }
