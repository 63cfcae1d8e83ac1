"""Read and write NIfTI volumes, with errors that name the file.

nibabel's own errors on a damaged file (``EOFError`` on a truncated gzip stream, a bare ``zlib.error``) do not say
which file failed; every reader here re-raises them as ``InputError`` with the path, and every writer goes through
``atomic_output`` so that no partial file is ever left under the final name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mri_ssl.io.atomic import atomic_output
from mri_ssl.io.images import DEFAULT_MAX_BYTES, NIFTI_SUFFIXES, read_nifti


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without its .nii or .nii.gz ending."""
    name = Path(path).name
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


def load_nifti(path: str | os.PathLike, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file completely and return ``(float32 array, 4x4 float64 affine)``.

    Trailing singleton dimensions (a 4-D file holding one volume) are dropped. All the per-file checks of
    ``mri_ssl.io.images.read_nifti`` apply (gzip CRC, size vs ``max_bytes`` and file length before allocating,
    dimensions, zero-size axes, NaN/Inf voxels, affine and pixdim); a failure raises ``DataIntegrityError`` (an
    ``InputError``) naming the file and the check.
    """
    image = read_nifti(path, spatial_dims=spatial_dims, max_bytes=max_bytes)
    return image.data, image.affine


def save_nifti(
    data: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    path: str | os.PathLike,
    description: str | None = None,
) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (temporary name, then rename); return the path.

    Float data are stored as float32, integer data (label maps) as int16/uint8.
    """
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    elif data.dtype != np.uint8:
        data = data.astype(np.int16)
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    if description:
        image.header["descrip"] = description.encode("ascii", "replace")[:79]
    with atomic_output(path) as temporary:
        nib.save(image, str(temporary))
    return Path(path)
