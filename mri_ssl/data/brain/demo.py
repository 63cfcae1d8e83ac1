"""The embedded default data: MNI152 qMRI phantom subjects written as NIfTI files plus a datalist.

Bundles read these files through the same loaders as a user's data (one code path for demo and real data). Each
subject is the MNI152 anatomy with its own seeded tissue-parameter jitter, smooth spatial variation of the maps and a
smooth random deformation (applied alike to its maps, labels and its copy of the real T1 image).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mri_ssl.data.brain.deformation import smooth_displacement, warp
from mri_ssl.data.datalist import DATALIST_NAME, DemoWriter
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json
from mri_ssl.io.nifti import save_nifti
from mri_ssl.physics.phantom import TISSUE_CLASSES, mni152_phantom
from mri_ssl.physics.protocols import TYPICAL_PROTOCOLS
from mri_ssl.physics.sequences import rician_noise
from mri_ssl.physics.simulate import simulate

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


# Every split draws its subjects from its own range of seeds, so a validation or test subject never shares a
# deformation or tissue draw with a training subject, in the pretraining data or the downstream data.
SPLITS = ("training", "validation", "test")
SUBJECT_SEEDING = "per-split"  # recorded in the datalist: demo data written under an older seeding are rewritten
_SUBJECTS_PER_SPLIT = 1_000_000


def subject_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of subject ``index`` (0-based within ``split``) of the data written with ``seed``."""
    if split not in SPLITS or not 0 <= int(index) < _SUBJECTS_PER_SPLIT:
        raise InputError("subject", f"expected a split in {SPLITS} and 0 <= index < {_SUBJECTS_PER_SPLIT}, "
                                    f"got {split!r}, {index}")
    return (int(seed) * len(SPLITS) + SPLITS.index(split)) * _SUBJECTS_PER_SPLIT + int(index)


def phantom_subject(index: int, seed: int, resolution_mm: float, deformation_mm: float, split: str = "training"
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, object]:
    """One seeded phantom subject, ``index`` within ``split``: ``(volumes, labels, affine)``.

    ``volumes`` holds the maps of ``MAP_KEYS`` and ``t1`` (the real MNI152 T1 image), all deformed alike by a smooth
    random displacement of standard deviation ``deformation_mm``; ``labels`` are ``TISSUE_CLASSES`` indices.
    """
    generator = torch.Generator().manual_seed(subject_seed(seed, split, index))
    phantom = mni152_phantom(resolution_mm, generator=generator)
    displacement = smooth_displacement(tuple(phantom.labels.shape), float(resolution_mm), float(deformation_mm),
                                       generator)
    volumes = {key: volume for key, volume in phantom.maps.items() if key in MAP_KEYS}
    volumes["t1"] = phantom.reference_t1
    labels = phantom.labels
    if deformation_mm > 0:
        volumes = {key: warp(volume, displacement) for key, volume in volumes.items()}
        labels = warp(labels, displacement, mode="nearest")
    return volumes, labels, phantom.affine


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
    split = int(subjects) - int(validation_subjects)
    for index in tqdm(range(int(subjects)), desc="demo subjects", unit="subject", disable=not progress):
        subject = f"sub-{index:02d}"
        split_index = (index, "training") if index < split else (index - split, "validation")
        volumes, labels, affine = phantom_subject(split_index[0], seed, resolution_mm, deformation_mm,
                                                  split=split_index[1])
        files = write_phantom_files(out_dir / subject, volumes, labels, affine)
        entry = {"subject": subject, **{key: f"{subject}/{name}" for key, name in files.items()}}
        entries.append(entry)
    datalist = {
        "name": "mri_ssl MNI152 qMRI phantom",
        "description": "qMRI maps (PD fraction, R1/R2/R2* in 1/s, MT fraction) built from nilearn's MNI152 2009 "
                       "T1/GM/WM templates with per-subject tissue jitter; written by `mri-ssl demo-data`.",
        "reference": "ICBM 2009c nonlinear symmetric template (Fonov et al. 2011), as shipped by nilearn",
        "kind": "pretrain",
        "tensorImageSize": "3D",
        "resolution_mm": float(resolution_mm),
        "seed": int(seed),
        "deformation_mm": float(deformation_mm),
        "subject_seeding": SUBJECT_SEEDING,
        "modality": {"pd": "PD", "r1": "R1", "r2": "R2", "r2s": "R2*", "mt": "MT"},
        "labels": {str(i): name for i, name in enumerate(TISSUE_CLASSES)},
        "numTraining": split,
        "training": entries[:split],
        "validation": entries[split:],
    }
    return save_json(datalist, out_dir / DATALIST_NAME)


# The downstream demo: segment tissue on a T1w-like simulated contrast, test on contrasts never seen in training and
# on the real MNI152 T1 image. Labels follow IXI's order so the demo and IXI configs share class names.
TISSUE_LABELS = {"0": "background", "1": "grey_matter", "2": "white_matter", "3": "csf"}
_PHANTOM_TO_TISSUE_LABEL = {"background": 0, "gm": 1, "wm": 2, "csf": 3, "non_brain": 0}
TRAINING_CONTRAST = "T1w"
DOWNSTREAM_CONTRASTS = {  # sequence name in the manifest -> (simulated sequence, protocol; times in s, angles in rad)
    "T1w": ("mprage", TYPICAL_PROTOCOLS["mprage"]),
    "T2w": ("fse", {"tr": 4.0, "te": 0.09}),
    "PDw": ("fse", {"tr": 4.0, "te": 0.012}),
    "FLAIR": ("flair", TYPICAL_PROTOCOLS["flair"]),
    "GRE": ("gre", {"tr": 0.6, "te": 0.02, "flip_angle": math.radians(20.0)}),  # T2*-weighted gradient echo
}
SIMULATED_SITE, REAL_SITE = "phantom", "mni152"
# Part of the downstream writer's version (and recorded in its datalist): data written under another layout (before
# training entries named their maps) are rewritten.
DOWNSTREAM_LAYOUT = "training-maps"
NOISE_FRACTION = 0.02  # Rician sigma as a fraction of the 99th percentile of the brain's signal


def tissue_labels(phantom_labels: torch.Tensor) -> torch.Tensor:
    """Map phantom classes (``TISSUE_CLASSES``) to ``TISSUE_LABELS``: non-brain tissue becomes background."""
    lookup = torch.zeros(len(TISSUE_CLASSES), dtype=torch.uint8)
    for name, value in _PHANTOM_TO_TISSUE_LABEL.items():
        lookup[TISSUE_CLASSES.index(name)] = value
    return lookup[phantom_labels.long()]


def simulate_contrast(maps: dict[str, torch.Tensor], contrast: str, brain: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """The ``contrast`` image of ``DOWNSTREAM_CONTRASTS`` with Rician noise at ``NOISE_FRACTION`` of brain signal."""
    sequence, protocol = DOWNSTREAM_CONTRASTS[contrast]
    image = simulate(maps, sequence, protocol)
    sigma = NOISE_FRACTION * float(torch.quantile(image[brain].float()[::7], 0.99))
    return rician_noise(image, sigma, generator=generator)


def write_downstream_demo(
    out_dir: str | os.PathLike = "demo_data/downstream",
    subjects: int = 8,
    test_subjects: int = 2,
    validation_subjects: int = 1,
    resolution_mm: float = 2.0,
    seed: int = 0,
    deformation_mm: float = 3.0,
    progress: bool = True,
) -> Path:
    """Write phantom subjects as images plus tissue labels and a segmentation datalist; return the datalist's path.

    Training and validation subjects get the ``TRAINING_CONTRAST`` (T1w, an MPRAGE) image; each test subject gets
    every contrast of ``DOWNSTREAM_CONTRASTS`` (site ``phantom``: the T1w row is in-domain, the others are unseen
    contrasts) and its deformed copy of the real MNI152 T1 image (site ``mni152``, sequence ``T1w``). Entries hold
    ``image``, ``label`` (``TISSUE_LABELS``), ``subject``, ``site`` and ``sequence``, and for training and validation
    subjects also the qMRI maps (``MAP_KEYS``, for heads trained on re-simulated contrasts), paths relative to
    ``out_dir``::

        out_dir/datalist.json
        out_dir/sub-XX/{T1w,T2w,PDw,FLAIR,GRE,mni152_T1w,label,pd,r1,r2,r2s,mt}.nii.gz
    """
    subjects, test_subjects, validation_subjects = int(subjects), int(test_subjects), int(validation_subjects)
    if test_subjects < 1 or validation_subjects < 0 or subjects - test_subjects - validation_subjects < 1:
        raise InputError("subjects", f"need at least one training and one test subject; got {subjects} subjects, "
                                     f"{test_subjects} for test and {validation_subjects} for validation")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_training = subjects - test_subjects - validation_subjects
    splits = {"training": [], "validation": [], "test": []}
    for index in tqdm(range(subjects), desc="downstream demo subjects", unit="subject", disable=not progress):
        split = "training" if index < n_training else "validation" if index < n_training + validation_subjects \
            else "test"
        subject = f"sub-{index:02d}"
        first_of_split = {"training": 0, "validation": n_training, "test": n_training + validation_subjects}[split]
        volumes, phantom_labels, affine = phantom_subject(index - first_of_split, seed, resolution_mm,
                                                          deformation_mm, split=split)
        maps = {key: volumes[key] for key in MAP_KEYS}
        brain = phantom_labels > 0
        generator = torch.Generator().manual_seed(int(seed) * 1000 + index + 500)
        contrasts = list(DOWNSTREAM_CONTRASTS) if split == "test" else [TRAINING_CONTRAST]
        images = {contrast: simulate_contrast(maps, contrast, brain, generator) for contrast in contrasts}
        if split == "test":
            images[f"{REAL_SITE}_T1w"] = volumes["t1"]
        else:  # the maps of a training or validation subject: heads may re-simulate its contrast every step
            images.update(maps)
        files = write_phantom_files(out_dir / subject, images, tissue_labels(phantom_labels), affine)
        map_files = {key: f"{subject}/{files.pop(key)}" for key in MAP_KEYS if key in files}
        for key, name in files.items():
            if key == "label":
                continue
            site, sequence = (REAL_SITE, "T1w") if key.startswith(REAL_SITE) else (SIMULATED_SITE, key)
            splits[split].append({"image": f"{subject}/{name}", "label": f"{subject}/{files['label']}",
                                  "subject": subject, "site": site, "sequence": sequence, **map_files})
    datalist = {
        "name": "mri_ssl MNI152 phantom, downstream tissue segmentation",
        "description": f"Simulated {TRAINING_CONTRAST} images for training; unseen simulated contrasts and the real "
                       f"MNI152 T1 image for testing; tissue labels from the MNI152 GM/WM templates. Written by "
                       f"`mri-ssl manifest demo`.",
        "reference": "ICBM 2009c nonlinear symmetric template (Fonov et al. 2011), as shipped by nilearn",
        "kind": "demo",
        "tensorImageSize": "3D",
        "resolution_mm": float(resolution_mm),
        "seed": int(seed),
        "deformation_mm": float(deformation_mm),
        "subject_seeding": SUBJECT_SEEDING,
        "layout": DOWNSTREAM_LAYOUT,
        "contrasts": {name: {"sequence": sequence, "protocol": dict(protocol)}
                      for name, (sequence, protocol) in DOWNSTREAM_CONTRASTS.items()},
        "labels": dict(TISSUE_LABELS),
        "numTraining": len(splits["training"]),
        **splits,
    }
    return save_json(datalist, out_dir / DATALIST_NAME)


# The embedded default data of the brain bundles (``resolve_datalist`` writes them on first use): qMRI maps for
# pretraining, simulated images with tissue labels and a test split for segmentation and denoising.
BRAIN_PRETRAIN_DEMO = DemoWriter("brain_pretrain", write_demo_data, version=SUBJECT_SEEDING)
BRAIN_DOWNSTREAM_DEMO = DemoWriter("brain_downstream", write_downstream_demo,
                                   version=f"{SUBJECT_SEEDING}+{DOWNSTREAM_LAYOUT}")
