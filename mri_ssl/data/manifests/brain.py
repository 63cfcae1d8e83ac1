"""Manifest scanners of brain MRI: IXI, ARC (stroke lesions, BIDS), folders of qMRI maps, and the embedded demo."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from mri_ssl.data.brain.demo import write_downstream_demo
from mri_ssl.data.brain.maps import find_map_files
from mri_ssl.data.manifests.common import PATH_KEYS, SPLITS, assign_splits, dataset_folder, subjects_to_splits
from mri_ssl.data.splits import subject_level_split
from mri_ssl.errors import InputError
from mri_ssl.io.nifti import is_nifti, nifti_stem

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# IXI: https://brain-development.org/ixi-dataset/ -- T1, T2 and PD images of ~580 healthy subjects from three sites.

IXI_FILE_PATTERN = re.compile(r"^(?P<subject>IXI\d{3})-(?P<site>Guys|HH|IOP)-(?P<number>\d{4})-(?P<sequence>T1|T2|PD)"
                              r"\.nii(?:\.gz)?$")
IXI_FILE_PATTERN_TEXT = "IXI###-{Guys,HH,IOP}-####-{T1,T2,PD}.nii.gz (or .nii)"
IXI_SITES = {"Guys": "GST", "HH": "HH", "IOP": "IOP"}
IXI_SEQUENCES = {"T1": "T1w", "T2": "T2w", "PD": "PDw"}
IXI_IN_DOMAIN_SITE = "GST"
IXI_LABEL_SUFFIXES = ("_label", "_seg", "_dseg", "_labels")
IXI_LABEL_FOLDER = "labels"
IXI_LABELS = {"0": "background", "1": "grey_matter", "2": "white_matter", "3": "csf"}
# The paper splits Guy's Hospital (GST) subjects 226/31/65 for training/validation/test.
IXI_GST_FRACTIONS = {"training": 226 / 322, "validation": 31 / 322, "test": 65 / 322}

# ARC: Aphasia Recovery Cohort, OpenNeuro ds004884 -- chronic stroke, BIDS, lesion masks under derivatives/.
ARC_SEQUENCES = ("T1w", "T2w", "FLAIR")
ARC_FILE_PATTERN_TEXT = "sub-*/ses-*/anat/*_{T1w,T2w,FLAIR}.nii.gz (or .nii)"
ARC_SITE = "ARC"
ARC_LABELS = {"0": "background", "1": "lesion"}
ARC_FRACTIONS = {"training": 0.7, "validation": 0.1, "test": 0.2}  # the paper's ~142/20/41 subjects
ARC_SESSION_PREFIX = re.compile(r"^(sub-[^_]+_ses-[^_]+)_")

# qMRI maps for pretraining: one folder per subject.
QMRI_REQUIRED_MAPS = ("pd", "r1", "r2s", "mt")
QMRI_FILE_PATTERN_TEXT = "DIR/<subject>/{pd,r1,r2s,mt}.nii.gz (or names ending in _PD, _R1, _R2s, _MT)"
QMRI_SITE = "qmri"
QMRI_FRACTIONS = {"training": 0.9, "validation": 0.1}
NO_MAPS_PROBLEM = "no qMRI maps found"  # the start of find_map_files' message for a folder without maps


# ----------------------------------------------------------------------------------------------------------------
# NIfTI file helpers


def _nifti_files(folder: Path) -> Iterator[Path]:
    """Every NIfTI file under ``folder``, recursively, in sorted order; hidden files and folders are skipped."""
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and is_nifti(name):
                yield Path(root) / name


def _nifti_with_stem(folder: Path, stem: str) -> Path | None:
    for ending in (".nii.gz", ".nii"):
        candidate = folder / f"{stem}{ending}"
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------------------------
# IXI


def find_ixi_label(image: Path, label_folders: list[Path]) -> Path | None:
    """The tissue label of an IXI image: ``<stem>{_label,_seg,_dseg,_labels}.nii.gz|.nii``, first match wins.

    Folders are searched in order (the image's folder first, then ``label_folders``); in each folder the suffixes in
    the order above, ``.nii.gz`` before ``.nii``.
    """
    stem = nifti_stem(image)
    for folder in [image.parent, *label_folders]:
        for suffix in IXI_LABEL_SUFFIXES:
            label = _nifti_with_stem(folder, stem + suffix)
            if label is not None:
                return label
    return None


def scan_ixi(directory: str | os.PathLike, seed: int = 0, label_dir: str | os.PathLike | None = None) -> dict:
    """A manifest of the IXI images found (recursively) under ``directory``.

    Images are named ``IXI###-{Guys,HH,IOP}-####-{T1,T2,PD}.nii.gz`` (or ``.nii``); other files are ignored. Each
    entry has ``image``, ``subject`` (``IXI###``), ``site`` (``GST`` for Guys, ``HH``, ``IOP``), ``sequence``
    (``T1w``, ``T2w``, ``PDw``) and, when found by ``find_ixi_label`` (image folder, then ``label_dir``, then
    ``directory/labels``), ``label`` (``IXI_LABELS``; IXI ships no tissue labels). Images without a label are kept
    (denoising needs none) and counted in ``"unlabeled"``.

    Splits: GST subjects subject-level 226/31/65 (of 322) training/validation/test, seeded; every HH and IOP subject
    is in ``test`` as out-of-domain data.
    """
    folder = dataset_folder(directory)
    label_folders = []
    if label_dir not in (None, ""):
        label_folders.append(Path(os.path.abspath(label_dir)))
        if not label_folders[0].is_dir():
            raise InputError(label_folders[0], "label folder (label_dir) not found")
    label_folders.append(folder / IXI_LABEL_FOLDER)
    entries, first_seen, site_of_subject = [], {}, {}
    for path in _nifti_files(folder):
        match = IXI_FILE_PATTERN.match(path.name)
        if match is None:
            continue
        if nifti_stem(path) in first_seen:
            raise InputError(path, f"the same IXI image is also at {first_seen[nifti_stem(path)]}; keep one copy")
        first_seen[nifti_stem(path)] = path
        subject, site = match["subject"], IXI_SITES[match["site"]]
        if site_of_subject.setdefault(subject, site) != site:
            raise InputError(path, f"subject {subject} also has images from site {site_of_subject[subject]}; "
                                   f"an IXI subject is scanned at one site")
        entry = {"image": str(path), "subject": subject, "site": site, "sequence": IXI_SEQUENCES[match["sequence"]]}
        label = find_ixi_label(path, label_folders)
        if label is not None:
            entry["label"] = str(label)
        entries.append(entry)
    if not entries:
        raise InputError(folder, f"no IXI images found; expected files named {IXI_FILE_PATTERN_TEXT}")
    gst_subjects = sorted(subject for subject, site in site_of_subject.items() if site == IXI_IN_DOMAIN_SITE)
    split_of_subject = {subject: "test" for subject in site_of_subject}  # out-of-domain sites: test only
    split_of_subject.update(subjects_to_splits(subject_level_split(gst_subjects, IXI_GST_FRACTIONS, seed)))
    if not gst_subjects:
        logger.warning("%s: no Guy's (GST) images, so the IXI manifest has no training subjects", folder)
    unlabeled = sum("label" not in entry for entry in entries)
    if unlabeled:
        logger.warning("%s: %d of %d IXI images have no tissue label (listed anyway; denoising needs none)", folder,
                       unlabeled, len(entries))
    return {
        "name": "IXI",
        "description": "IXI T1/T2/PD brain MRI (https://brain-development.org/ixi-dataset/). GST subjects split "
                       "subject-level 226/31/65 (of 322) into training/validation/test; HH and IOP subjects are "
                       "out-of-domain test data. Tissue labels are the user's own.",
        "kind": "ixi",
        "seed": int(seed),
        "tensorImageSize": "3D",
        "labels": dict(IXI_LABELS),
        "unlabeled": unlabeled,
        **assign_splits(entries, split_of_subject),
    }


# ----------------------------------------------------------------------------------------------------------------
# ARC


def arc_session(path: Path) -> str | None:
    """The ``sub-X_ses-Y`` a BIDS file name starts with, or None."""
    match = ARC_SESSION_PREFIX.match(path.name)
    return match[1] if match else None


def _arc_sequence(path: Path) -> str | None:
    """``T1w``, ``T2w`` or ``FLAIR`` when that is the BIDS suffix (last entity) of the file name."""
    suffix = nifti_stem(path).rsplit("_", 1)[-1]
    return suffix if suffix in ARC_SEQUENCES else None


def _names_sequence(path: Path, sequence: str) -> bool:
    return sequence.lower() in path.name.lower()


def _arc_lesion_masks(folder: Path) -> dict[str, list[Path]]:
    """Lesion masks under ``folder`` (recursively), by session: NIfTIs named ``sub-X_ses-Y_...lesion...``."""
    masks: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return masks
    for path in _nifti_files(folder):
        session = arc_session(path)
        if session and "lesion" in path.name.lower():
            masks.setdefault(session, []).append(path)
    return masks


def choose_lesion_mask(image: Path, candidates: list[Path]) -> Path | None:
    """The lesion mask of ``image`` among ``candidates`` (masks of its session, anat folder first), or None.

    Preferred: a mask named after the whole image (``<image stem>_...``), then one whose name contains the image's
    sequence (``T1w``/``T2w``/``FLAIR``, any case), then a session mask naming no sequence at all. A mask naming
    another sequence is never used. Ties go to the first candidate.
    """
    sequence = _arc_sequence(image)
    stem = nifti_stem(image)
    tiers = (
        [mask for mask in candidates if mask.name.startswith(stem + "_")],
        [mask for mask in candidates if _names_sequence(mask, sequence)],
        [mask for mask in candidates if not any(_names_sequence(mask, other) for other in ARC_SEQUENCES)],
    )
    for tier in tiers:
        if tier:
            if len(tier) > 1:
                logger.info("%s: %d lesion masks fit equally well; using %s", image, len(tier), tier[0])
            return tier[0]
    return None


def scan_arc(directory: str | os.PathLike, seed: int = 0) -> dict:
    """A manifest of the ARC stroke dataset (OpenNeuro ds004884) in BIDS layout under ``directory``.

    Images are ``sub-*/ses-*/anat/*_{T1w,T2w,FLAIR}.nii.gz`` (or ``.nii``); nothing under ``derivatives/`` is taken
    as an image. Lesion masks are NIfTIs whose name starts with the image's ``sub-X_ses-Y`` and contains ``lesion``
    (any case), in the image's anat folder or anywhere under ``directory/derivatives/``, chosen by
    ``choose_lesion_mask``. Entries: ``image``, ``label`` (when a mask was found; ``ARC_LABELS``), ``subject``
    (``sub-X``), ``site`` (``ARC``), ``sequence``; images without a mask are counted in ``"unlabeled"``.
    Splits: subject-level 70/10/20 training/validation/test, seeded.
    """
    folder = dataset_folder(directory)
    derivative_masks = _arc_lesion_masks(folder / "derivatives")
    entries = []
    for anat in sorted(folder.glob("sub-*/ses-*/anat")):
        anat_masks = _arc_lesion_masks(anat)
        for path in sorted(anat.iterdir()):
            sequence = _arc_sequence(path)
            session = arc_session(path)
            if not is_nifti(path) or sequence is None or session is None or "lesion" in path.name.lower():
                continue
            entry = {"image": str(path), "subject": session.split("_")[0], "site": ARC_SITE, "sequence": sequence}
            mask = choose_lesion_mask(path, anat_masks.get(session, []) + derivative_masks.get(session, []))
            if mask is not None:
                entry["label"] = str(mask)
            entries.append(entry)
    if not entries:
        raise InputError(folder, f"no ARC images found; expected BIDS files {ARC_FILE_PATTERN_TEXT}")
    subjects = sorted({entry["subject"] for entry in entries})
    split_of_subject = subjects_to_splits(subject_level_split(subjects, ARC_FRACTIONS, seed))
    unlabeled = sum("label" not in entry for entry in entries)
    if unlabeled:
        logger.warning("%s: %d of %d ARC images have no lesion mask", folder, unlabeled, len(entries))
    return {
        "name": "ARC",
        "description": "Aphasia Recovery Cohort (OpenNeuro ds004884): T1w/T2w/FLAIR of chronic stroke with lesion "
                       "masks; subjects split 70/10/20 into training/validation/test.",
        "kind": "arc",
        "seed": int(seed),
        "tensorImageSize": "3D",
        "labels": dict(ARC_LABELS),
        "unlabeled": unlabeled,
        **assign_splits(entries, split_of_subject),
    }


# ----------------------------------------------------------------------------------------------------------------
# qMRI maps


def scan_qmri(directory: str | os.PathLike, seed: int = 0) -> dict:
    """A pretraining manifest of qMRI maps: each immediate sub-folder of ``directory`` is one subject.

    Maps are found by ``find_map_files`` (``pd``, ``r1``, ``r2s``, ``mt``, also ``r2``/``b1`` when present); folders
    without any map are skipped, a folder lacking one of ``QMRI_REQUIRED_MAPS`` is an ``InputError`` naming it.
    Entries: ``subject`` (folder name), ``site`` (``qmri``) and one path per map. Splits: subject-level 90/10
    training/validation, seeded, with at least one validation subject when there are two or more.
    """
    folder = dataset_folder(directory)
    entries = []
    for subject_folder in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        try:
            maps = find_map_files(subject_folder)
        except InputError as error:
            if error.problem.startswith(NO_MAPS_PROBLEM):
                continue
            raise
        missing = [name for name in QMRI_REQUIRED_MAPS if name not in maps]
        if missing:
            raise InputError(subject_folder, f"missing {', '.join(missing)} map(s) (found {', '.join(maps)}); "
                                             f"pretraining needs {', '.join(QMRI_REQUIRED_MAPS)}")
        entries.append({"subject": subject_folder.name, "site": QMRI_SITE,
                        **{name: str(path) for name, path in maps.items()}})
    if not entries:
        raise InputError(folder, f"no sub-folders with qMRI maps found; expected {QMRI_FILE_PATTERN_TEXT}")
    splits = subject_level_split([entry["subject"] for entry in entries], QMRI_FRACTIONS, seed)
    return {
        "name": "qMRI maps",
        "description": "Quantitative MRI maps (PD, R1 and R2* in 1/s, MT) for sequence-simulating pretraining; "
                       "subjects split 90/10 into training/validation.",
        "kind": "qmri",
        "seed": int(seed),
        "tensorImageSize": "3D",
        **assign_splits(entries, subjects_to_splits(splits)),
    }


# ----------------------------------------------------------------------------------------------------------------
# embedded demo data


def scan_demo(directory: str | os.PathLike, seed: int = 0, subjects: int = 8, resolution_mm: float = 2.0,
              test_subjects: int = 2, validation_subjects: int = 1, progress: bool = True) -> dict:
    """Write the embedded MNI152 phantom images into ``directory`` (created) and return their manifest.

    Calls ``write_downstream_demo`` (``subjects`` phantom subjects at ``resolution_mm`` mm voxels, of which
    ``test_subjects`` test and ``validation_subjects`` validation subjects) and returns the datalist it wrote, with
    ``image``/``label`` paths made absolute like the other scanners'.
    """
    datalist_path = write_downstream_demo(directory, subjects=subjects, test_subjects=test_subjects,
                                          validation_subjects=validation_subjects, resolution_mm=resolution_mm,
                                          seed=seed, progress=progress)
    content = json.loads(Path(datalist_path).read_text())
    base = Path(os.path.abspath(datalist_path)).parent
    for split in SPLITS:
        for entry in content.get(split) or []:
            for key in PATH_KEYS:
                if key in entry:
                    entry[key] = os.path.normpath(os.path.join(base, entry[key]))
    return content
