"""qMRI maps on disk: find a subject's maps in a folder by file name, and load a set of them checked as one subject.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from mri_ssl.data.integrity import check_case
from mri_ssl.errors import InputError
from mri_ssl.io.nifti import is_nifti, nifti_stem
from mri_ssl.physics.simulate import MAP_NAMES, check_maps

# File-name endings that identify each qMRI map, e.g. ``sub-01_R1.nii.gz`` or the hMRI toolbox's ``*_R2s_OLS.nii``.
MAP_FILE_PATTERNS = {
    "pd": ("pd",),
    "r1": ("r1",),
    "r2s": ("r2s", "r2s_ols", "r2star"),
    "r2": ("r2",),
    "mt": ("mt", "mtsat"),
    "b1": ("b1",),
}


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
