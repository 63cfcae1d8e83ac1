"""The embedded default data of the cardiac sequence-classification bundle: phantom studies as 2-D NIfTI + datalist.

Each subject (one study) gets a random ``HeartAnatomy`` (healthy or diseased, ``sample_anatomy``) and one series of
each sequence class, as a scanner would acquire them: T1 and T2 black-blood spin echoes, a cine (several frames over
the cardiac cycle), an LGE and one "Other" series (T1 map, T2 map, perfusion or scout). Each series keeps a few
slices around the middle of the ventricle, like the paper's central 20 % of slices. Every image is an 84 x 84 float
NIfTI (pixel size in the affine), the datalist is the decathlon-style JSON the bundles read (the same format
``mri-ssl manifest dicom`` writes for real DICOM data), and ``montage.png`` shows one image per class.

Splits are subject-level (``subject_level_split``): no study has images in two splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from mri_ssl.data.datalist import DATALIST_NAME, DemoWriter
from mri_ssl.data.splits import subject_level_split
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output, save_json
from mri_ssl.physics.cardiac import DEFAULT_MATRIX, SEQUENCE_CLASSES, render_study, sample_anatomy

CARDIAC_DEMO_KIND = "cardiac_demo"
CLASS_LABELS = {str(index): name for index, name in enumerate(SEQUENCE_CLASSES)}
SPLIT_FRACTIONS = {"training": 0.7, "validation": 0.1, "test": 0.2}  # the paper's patient-level split
MONTAGE_NAME = "montage.png"


def write_cardiac_demo(folder: str | os.PathLike, subjects: int = 40, seed: int = 0, slices: int = 2,
                       cine_frames: int = 3, disease_probability: float = 0.5, progress: bool = True) -> Path:
    """Write ``subjects`` phantom studies into ``folder`` and return the path of its ``datalist.json``.

    Args:
        folder: output folder (created).
        subjects: studies; split 70 / 10 / 20 % by subject (at least 3 for one per split).
        seed: seed of anatomy, protocols, noise and splits.
        slices: short-axis slices per series (long-axis series have one).
        cine_frames: frames per cine slice, evenly spaced over the cardiac cycle from a random start.
        disease_probability: chance that a subject has a dilated / hypertrophic LV, an infarct scar or a large RV.
        progress: show a progress bar.
    """
    if int(subjects) < 3:
        raise InputError("subjects", f"need at least 3 subjects (one per split), got {subjects}")
    if int(slices) < 1 or int(cine_frames) < 1:
        raise InputError("slices", f"need at least one slice and one cine frame, got {slices} and {cine_frames}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([300.0 / DEFAULT_MATRIX, 300.0 / DEFAULT_MATRIX, 8.0, 1.0])  # pixel size, 8 mm slices
    names = [f"case{index:03d}" for index in range(int(subjects))]
    entries = []
    montage = {}
    for index, subject in enumerate(tqdm(names, desc="cardiac phantom studies", unit="study",
                                         disable=not progress)):
        rng = np.random.default_rng([int(seed), index])
        anatomy = sample_anatomy(rng, disease_probability)
        study = render_study(anatomy, rng, int(slices), int(cine_frames))
        for class_index, sequence_class in enumerate(SEQUENCE_CLASSES):
            for image in study[sequence_class]:
                name = f"{subject}_{sequence_class.lower()}_s{image.slice_index}_f{image.frame}.nii.gz"
                (folder / subject).mkdir(exist_ok=True)
                # Plain writes, not fsynced one by one (hundreds of small files): the datalist, written atomically
                # last, is what makes the folder count as written, so an interrupted run is simply redone.
                nib.save(nib.Nifti1Image(image.image, affine), str(folder / subject / name))
                entries.append({"image": f"{subject}/{name}", "subject": subject, "site": "phantom",
                                "sequence": sequence_class, "class_index": class_index,
                                "series": f"{subject}_{sequence_class.lower()}", "kind": image.kind,
                                "view": image.view, "phase": round(image.phase, 4)})
                montage.setdefault(sequence_class if sequence_class != "Other" else image.kind, image.image)
    splits = subject_level_split(names, SPLIT_FRACTIONS, seed=int(seed))
    split_of = {subject: split for split, members in splits.items() for subject in members}
    datalist = {
        "name": "cardiac phantom", "kind": CARDIAC_DEMO_KIND, "seed": int(seed), "tensorImageSize": "2D",
        "description": "2-D beating-heart phantom studies (mri_ssl.physics.cardiac), one series per sequence class",
        "labels": CLASS_LABELS, "subjects": int(subjects), "slices": int(slices), "cine_frames": int(cine_frames),
        "disease_probability": float(disease_probability),
    }
    for split in SPLIT_FRACTIONS:
        datalist[split] = [entry for entry in entries if split_of[entry["subject"]] == split]
    save_montage(montage, folder / MONTAGE_NAME)
    return save_json(datalist, folder / DATALIST_NAME)


def save_montage(images: dict[str, np.ndarray], path: Path) -> Path:
    """One image per class or kind, side by side, as a PNG a person can look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.6))
    for axis, (title, image) in zip(np.atleast_1d(axes), images.items()):
        axis.imshow(image, cmap="gray", vmin=0.0, vmax=float(np.percentile(image, 99.5)))
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)
    return path


# The embedded default data of the cardiac_sequence_classification bundle (``resolve_datalist`` writes them).
CARDIAC_DEMO = DemoWriter("cardiac", write_cardiac_demo)
