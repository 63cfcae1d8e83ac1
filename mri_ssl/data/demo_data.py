"""The embedded default data: MNI152 qMRI phantom subjects written as NIfTI files plus a datalist.

Bundles read these files through the same loaders as a user's data (one code path for demo and real data). Each
subject is the MNI152 anatomy with its own seeded tissue-parameter jitter, smooth spatial variation of the maps and a
smooth random deformation (applied alike to its maps, labels and its copy of the real T1 image).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mri_ssl.data.datalist import DATALIST_NAME
from mri_ssl.data.deformation import smooth_displacement, warp
from mri_ssl.data.nifti import save_json, save_nifti
from mri_ssl.errors import InputError
from mri_ssl.physics.phantom import TISSUE_CLASSES, mni152_phantom

MAP_KEYS = ("pd", "r1", "r2", "r2s", "mt")


def write_phantom_files(folder: str | os.PathLike, volumes: dict[str, torch.Tensor], labels: torch.Tensor,
                        affine) -> dict[str, str]:
    """Write each volume as ``<name>.nii.gz`` and the labels as ``label.nii.gz`` (uint8) in ``folder``.

    Returns the file name of each key, ``label`` included.
    """
    folder = Path(folder)
    names = {}
    for key, volume in volumes.items():
        save_nifti(volume, affine, folder / f"{key}.nii.gz", description=f"mri_ssl {key}")
        names[key] = f"{key}.nii.gz"
    save_nifti(labels.to(torch.uint8), affine, folder / "label.nii.gz")
    names["label"] = "label.nii.gz"
    return names


def write_demo_data(
    out_dir: str | os.PathLike = "demo_data",
    subjects: int = 4,
    validation_subjects: int = 1,
    resolution_mm: float = 1.0,
    seed: int = 0,
    deformation_mm: float = 3.0,
    progress: bool = True,
) -> Path:
    """Write ``subjects`` phantom subjects and a decathlon-style datalist; return the datalist's path.

    Layout::

        out_dir/datalist.json                 {"training": [...], "validation": [...], "labels": {...}, ...}
        out_dir/sub-XX/{pd,r1,r2,r2s,mt,label,t1}.nii.gz

    Entries hold paths relative to ``out_dir`` (``monai.data.load_decathlon_datalist`` resolves them), with keys
    ``subject``, ``pd``, ``r1``, ``r2``, ``r2s``, ``mt`` (fraction), ``label`` (``TISSUE_CLASSES``) and ``t1`` (the
    real MNI152 T1 image, deformed like the subject). ``deformation_mm`` is the standard deviation of the random
    displacement at its control points (about 40 mm apart); 0 keeps every subject in MNI space.
    """
    if int(subjects) < 1:
        raise InputError("subjects", f"need at least one subject, got {subjects}")
    if not 0 <= int(validation_subjects) < int(subjects):
        raise InputError("validation_subjects", f"must be in [0, subjects), got {validation_subjects} of {subjects}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in tqdm(range(int(subjects)), desc="demo subjects", unit="subject", disable=not progress):
        generator = torch.Generator().manual_seed(int(seed) * 1000 + index)
        phantom = mni152_phantom(resolution_mm, generator=generator)
        displacement = smooth_displacement(tuple(phantom.labels.shape), float(resolution_mm), float(deformation_mm),
                                           generator)
        subject = f"sub-{index:02d}"
        volumes = {key: volume for key, volume in phantom.maps.items() if key in MAP_KEYS}
        volumes["t1"] = phantom.reference_t1
        labels = phantom.labels
        if deformation_mm > 0:
            volumes = {key: warp(volume, displacement) for key, volume in volumes.items()}
            labels = warp(labels, displacement, mode="nearest")
        files = write_phantom_files(out_dir / subject, volumes, labels, phantom.affine)
        entry = {"subject": subject, **{key: f"{subject}/{name}" for key, name in files.items()}}
        entries.append(entry)
    split = len(entries) - int(validation_subjects)
    datalist = {
        "name": "mri_ssl MNI152 qMRI phantom",
        "description": "qMRI maps (PD fraction, R1/R2/R2* in 1/s, MT fraction) built from nilearn's MNI152 2009 "
                       "T1/GM/WM templates with per-subject tissue jitter; written by `mri-ssl demo-data`.",
        "reference": "ICBM 2009c nonlinear symmetric template (Fonov et al. 2011), as shipped by nilearn",
        "tensorImageSize": "3D",
        "resolution_mm": float(resolution_mm),
        "seed": int(seed),
        "deformation_mm": float(deformation_mm),
        "modality": {"pd": "PD", "r1": "R1", "r2": "R2", "r2s": "R2*", "mt": "MT"},
        "labels": {str(i): name for i, name in enumerate(TISSUE_CLASSES)},
        "numTraining": split,
        "training": entries[:split],
        "validation": entries[split:],
    }
    return save_json(datalist, out_dir / DATALIST_NAME)
