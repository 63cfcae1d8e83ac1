"""Read and write NIfTI volumes and sets of qMRI maps, with errors that name the file.

nibabel's own errors on a damaged file (``EOFError`` on a truncated gzip stream, a bare ``zlib.error``) do not say
which file failed; every reader here re-raises them as ``InputError`` with the path, and every writer goes through
``atomic_output`` so that no partial file is ever left under the final name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np
import torch

from mri_ssl.data.integrity import AFFINE_TOLERANCE_MM, DEFAULT_MAX_BYTES, check_case, read_nifti  # noqa: F401
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output
from mri_ssl.physics.simulate import MAP_NAMES, check_maps

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# File-name endings that identify each qMRI map, e.g. ``sub-01_R1.nii.gz`` or the hMRI toolbox's ``*_R2s_OLS.nii``.
MAP_FILE_PATTERNS = {
    "pd": ("pd",),
    "r1": ("r1",),
    "r2s": ("r2s", "r2s_ols", "r2star"),
    "r2": ("r2",),
    "mt": ("mt", "mtsat"),
    "b1": ("b1",),
}


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
    ``mri_ssl.data.integrity.read_nifti`` apply (gzip CRC, size vs ``max_bytes`` and file length before allocating,
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


def find_map_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Find qMRI maps in ``directory`` by file name: a NIfTI whose name is or ends in ``_<map>`` (any case).

    Recognised endings are listed in ``MAP_FILE_PATTERNS`` (``pd``, ``r1``, ``r2s``/``r2s_ols``/``r2star``,
    ``r2``, ``mt``/``mtsat``, ``b1``). Raises ``InputError`` when the folder is missing or a map matches twice.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "maps folder not found")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not is_nifti(path):
            continue
        stem = nifti_stem(path).lower()
        for name, endings in MAP_FILE_PATTERNS.items():
            if any(stem == ending or stem.endswith(f"_{ending}") or stem.endswith(f"-{ending}") for ending in endings):
                if name in found:
                    raise InputError(path, f"a second {name} map in the folder (first: {found[name].name})")
                found[name] = path
                break
    if not found:
        raise InputError(directory, "no qMRI maps found; expected NIfTI files named like pd.nii.gz, r1.nii.gz, "
                                    "r2s.nii.gz, mt.nii.gz (or ending in _PD, _R1, _R2s, _MT)")
    return found


def load_maps(files: Mapping[str, str | os.PathLike]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Load a set of qMRI maps, checking them as one subject; return ``(maps, affine)``.

    Args:
        files: map name (one of ``MAP_NAMES``) to NIfTI path.

    Raises ``InputError`` naming the file for an unknown map name, and ``DataIntegrityError`` naming the file and
    the check for a missing or unreadable file, a non-3-D map, maps whose shapes or affines differ, non-finite voxels
    or values outside the physical range (``integrity.check_case``, then ``check_maps`` for what simulation needs).
    """
    if not files:
        raise InputError("maps", "no map files given")
    for name, path in files.items():
        if name not in MAP_NAMES:
            raise InputError(path, f"unknown map name {name!r}; expected one of {', '.join(MAP_NAMES)}")
    findings, images = check_case(files, spatial_dims=3)
    errors = [finding for finding in findings if finding.status == "error"]
    if errors:
        raise errors[0].as_error()
    maps = {name: torch.from_numpy(image.data) for name, image in images.items()}
    try:
        check_maps(maps, spatial_dims=3)
    except InputError as error:
        path = files.get(error.source, error.source)
        raise InputError(path, f"{error.source} map: {error.problem}") from error
    return maps, next(iter(images.values())).affine
