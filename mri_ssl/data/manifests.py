"""Scan a local copy of a dataset and write a decathlon-style datalist (a *manifest*) that the bundles train on.

A manifest is the JSON ``monai.data.load_decathlon_datalist`` reads::

    {"name": ..., "description": ..., "kind": "ixi", "seed": 0, "labels": {"0": "background", ...},
     "training": [{"image": ..., "label": ..., "subject": ..., "site": ..., "sequence": ...}, ...],
     "validation": [...], "test": [...]}

Scanners (``SCANNERS``) return that dict with absolute paths; ``write_manifest`` makes a path relative to the
manifest's folder only when the file lies under that folder, so a manifest written beside the data can be moved with
it, and one written elsewhere (``data_manifests/``) points at the data wherever it is. Splits are subject-level and
seeded (``mri_ssl.data.splits``). The formats are documented in ``data_manifests/README.md``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Mapping

from mri_ssl.data.nifti import MAP_FILE_PATTERNS, find_map_files, is_nifti, nifti_stem
from mri_ssl.data.splits import check_disjoint_subjects, subject_level_split
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json

logger = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "data_manifests" / "schema.json"
SPLITS = ("training", "validation", "test")
# Entry keys that hold file paths (made relative or kept absolute by write_manifest); the rest are plain values.
PATH_KEYS = ("image", "label", "mask", *MAP_FILE_PATTERNS)

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
# shared helpers


def _dataset_folder(directory: str | os.PathLike) -> Path:
    """``directory`` as an absolute path (symlinks kept, so annexed files keep their names); must exist."""
    folder = Path(os.path.abspath(directory))
    if not folder.is_dir():
        raise InputError(folder, "dataset folder not found")
    return folder


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


def _assign_splits(entries: list[dict], split_of_subject: Mapping[str, str]) -> dict[str, list[dict]]:
    """Group entries by their subject's split; every split of ``SPLITS`` is present (possibly empty)."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for entry in entries:
        splits[split_of_subject[entry["subject"]]].append(entry)
    return splits


def _split_of_subject(splits: Mapping[str, list[str]]) -> dict[str, str]:
    return {subject: split for split, subjects in splits.items() for subject in subjects}


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
    folder = _dataset_folder(directory)
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
    split_of_subject.update(_split_of_subject(subject_level_split(gst_subjects, IXI_GST_FRACTIONS, seed)))
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
        **_assign_splits(entries, split_of_subject),
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
    folder = _dataset_folder(directory)
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
    split_of_subject = _split_of_subject(subject_level_split(subjects, ARC_FRACTIONS, seed))
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
        **_assign_splits(entries, split_of_subject),
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
    folder = _dataset_folder(directory)
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
        **_assign_splits(entries, _split_of_subject(splits)),
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
    from mri_ssl.data.brain.demo import write_downstream_demo

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


def scan_dicom_folder(directory: str | os.PathLike, seed: int = 0, images_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> dict:
    """Cardiac MR DICOM series -> a sequence-classification manifest (``mri_ssl.data.cardiac.dicom_series.scan_dicom``);
    the kept slices are written as 84 x 84 NIfTI files under ``images_dir``."""
    from mri_ssl.data.cardiac.dicom_series import scan_dicom

    if images_dir in (None, ""):
        raise InputError("images_dir", "the DICOM scanner needs a folder to write the resampled images to")
    return scan_dicom(directory, images_dir, seed=seed, progress=progress)


SCANNERS: dict[str, Callable[..., dict]] = {"ixi": scan_ixi, "arc": scan_arc, "qmri": scan_qmri, "demo": scan_demo,
                                            "dicom": scan_dicom_folder}


def _photo_scanner(kind: str) -> Callable[..., dict]:
    """The 2-D scanners live in ``photo_manifests`` (which imports this module), so they are looked up on use."""
    def scan(directory: str | os.PathLike, seed: int = 0, **options) -> dict:
        from mri_ssl.data import photo_manifests

        return getattr(photo_manifests, f"scan_{kind}")(directory, seed=seed, **options)

    scan.__name__ = f"scan_{kind}"
    return scan


PHOTO_KINDS = ("odir", "idrid", "refuge", "chestxray14")
SCANNERS.update({kind: _photo_scanner(kind) for kind in PHOTO_KINDS})


# ----------------------------------------------------------------------------------------------------------------
# writing, validating, summarising


def relative_to_manifest(path: str, manifest_folder: Path) -> str:
    """``path`` relative to ``manifest_folder`` when the file lies under it, else absolute.

    Symlinks are not resolved, so files of a DataLad/git-annex dataset keep their names.
    """
    absolute = Path(os.path.abspath(path))
    if absolute.is_relative_to(manifest_folder):
        return os.path.relpath(absolute, manifest_folder)
    return str(absolute)


def _relative_paths(value, manifest_folder: Path):
    """``relative_to_manifest`` of a path, or of each path of a list (e.g. IDRiD's one mask file per lesion type)."""
    if isinstance(value, list):
        return [relative_to_manifest(item, manifest_folder) for item in value]
    return relative_to_manifest(value, manifest_folder)


def _with_manifest_paths(manifest: dict, manifest_folder: Path) -> dict:
    result = dict(manifest)
    for split in SPLITS:
        if split in manifest:
            result[split] = [{key: _relative_paths(value, manifest_folder) if key in PATH_KEYS else value
                              for key, value in entry.items()} for entry in manifest[split]]
    return result


def validate_manifest(manifest: Mapping, source: str | os.PathLike = "manifest",
                      schema_path: str | os.PathLike | None = None) -> None:
    """Check ``manifest`` against ``data_manifests/schema.json``; raise ``InputError(source, ...)`` if it fails.

    The error names the place in the manifest (e.g. ``training/3``) and what is wrong there. When the schema file is
    absent (a non-editable install has no ``data_manifests/``), validation is skipped with a logged warning.
    """
    import jsonschema

    schema_path = Path(schema_path) if schema_path is not None else SCHEMA_PATH
    if not schema_path.is_file():
        logger.warning("manifest schema %s not found (non-editable install?); not validating %s", schema_path, source)
        return
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(manifest), key=lambda error: list(error.absolute_path))
    if errors:
        shown = [f"at {'/'.join(str(part) for part in error.absolute_path) or 'top level'}: {error.message}"
                 for error in errors[:3]]
        more = f"; and {len(errors) - 3} more problems" if len(errors) > 3 else ""
        raise InputError(source, f"not a valid manifest ({'; '.join(shown)}{more}); see data_manifests/README.md")


def write_manifest(kind: str, directory: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                   **options) -> Path:
    """Scan ``directory`` with ``SCANNERS[kind]`` and write the manifest to ``out`` atomically; return ``out``.

    ``options`` go to the scanner (``label_dir`` for ixi; ``subjects``, ``resolution_mm``, ... for demo). Paths under
    ``out``'s folder are written relative to it, others absolute. Raises ``InputError`` for an unknown kind, a
    missing dataset folder (demo creates it), a folder without matching files (naming the expected pattern), a
    subject in two splits, or a manifest that fails ``validate_manifest``.
    """
    if kind not in SCANNERS:
        raise InputError("kind", f"unknown dataset kind {kind!r}; expected one of {', '.join(SCANNERS)}")
    if kind != "demo":
        _dataset_folder(directory)
    manifest = SCANNERS[kind](directory, seed=seed, **options)
    check_disjoint_subjects(manifest)
    out = Path(os.path.abspath(out))
    manifest = _with_manifest_paths(manifest, out.parent)
    validate_manifest(manifest, source=out)
    return save_json(manifest, out)


def manifest_summary(datalist: Mapping) -> str:
    """A text table of images, subjects and labelled images per split x site x sequence, with a total row."""
    header = ("split", "site", "sequence", "images", "subjects", "labelled")
    rows, subjects_total, images_total, labelled_total = [], set(), 0, 0
    for split in SPLITS:
        entries = datalist.get(split) or []
        groups = Counter((entry.get("site", "-"), entry.get("sequence", "-")) for entry in entries)
        for site, sequence in sorted(groups):
            group = [e for e in entries if (e.get("site", "-"), e.get("sequence", "-")) == (site, sequence)]
            rows.append((split, site, sequence, str(len(group)), str(len({e.get("subject") for e in group})),
                         str(sum("label" in e for e in group))))
        subjects_total |= {entry.get("subject") for entry in entries}
        images_total += len(entries)
        labelled_total += sum("label" in entry for entry in entries)
    rows.append(("total", "", "", str(images_total), str(len(subjects_total)), str(labelled_total)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row) -> str:
        text = [cell.ljust(width) if i < 3 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        return "  ".join(text).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *[line(row) for row in rows]])
