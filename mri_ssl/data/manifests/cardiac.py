"""Manifest scanner for cardiac MR DICOM folders (sequence classification)."""

from __future__ import annotations

import os

from mri_ssl.data.cardiac.dicom_series import scan_dicom
from mri_ssl.errors import InputError


def scan_dicom_folder(directory: str | os.PathLike, seed: int = 0, images_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> dict:
    """Cardiac MR DICOM series -> a sequence-classification manifest (``mri_ssl.data.cardiac.dicom_series.scan_dicom``);
    the kept slices are written as 84 x 84 NIfTI files under ``images_dir``."""
    if images_dir in (None, ""):
        raise InputError("images_dir", "the DICOM scanner needs a folder to write the resampled images to")
    return scan_dicom(directory, images_dir, seed=seed, progress=progress)
