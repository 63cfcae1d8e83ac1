"""Manifest scanners for the public 2-D datasets of CAMContrast, in their published layouts.

Each returns a manifest dict (absolute paths) with entries ``image``, ``abnormal`` (the coarse label: any disease
vs normal), ``subject``, ``site`` (the dataset), ``sequence`` (``fundus`` / ``xray``) and, where the dataset has
pixel annotations, ``mask`` (a path, or a list of paths joined by union). ``write_manifest`` (``mri-ssl manifest
KIND DIR``) checks and writes it. Splits are subject-level and seeded; official test sets are kept as ``test``.

* ``odir`` (OIA-ODIR / ODIR-5K): a CSV annotation (the published ``.xlsx`` saved as CSV) with ``ID``,
  ``Left-Fundus``, ``Right-Fundus`` and, when present, ``Left-Diagnostic Keywords`` / ``Right-Diagnostic Keywords``;
  images found anywhere under DIR by file name. An eye is normal when its keywords are "normal fundus" (possibly
  with the non-disease notes "lens dust", "low image quality", "image offset"); without keyword columns, the
  patient-level ``N`` column decides for both eyes. Subject: the patient ``ID``. Splits 80/10/10.
* ``idrid`` (IDRiD): ``B. Disease Grading`` images with the ``... Training Labels.csv`` / ``... Testing Labels.csv``
  grades, kept as ``dr_grade`` ('Retinopathy grade', 0-4) and ``dme_grade`` ('Risk of macular edema', 0-2) for the
  joint DR / DME grading task (abnormal when either is above 0), and ``A. Segmentation``
  images with their lesion masks ``IDRiD_XX_{MA,HE,EX,SE}.tif`` joined as one lesion mask (all abnormal).
  Official training / testing sets; 20 % of the training images for validation.
* ``refuge`` (REFUGE Training400): ``Glaucoma/`` (abnormal) and ``Non-Glaucoma/`` images; optic-disc masks from
  ``Disc_Cup_Masks/`` (grey 0 cup, 128 rim, 255 background, so ``mask_background_value`` 255). Splits 80/10/10.
* ``chestxray14`` (NIH ChestX-ray14): ``Data_Entry_2017*.csv`` (``Image Index``, ``Finding Labels``, ``Patient
  ID``); "No Finding" is normal. ``train_val_list.txt`` / ``test_list.txt`` give the official split; 10 % of the
  train-val patients for validation.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Iterable

from mri_ssl.data.manifests.common import assign_splits, dataset_folder, subjects_to_splits
from mri_ssl.data.photo.fundus import IMAGE_SUFFIXES
from mri_ssl.data.splits import subject_level_split
from mri_ssl.errors import InputError
from mri_ssl.grades import DME_GRADES, DR_GRADES

ODIR_NON_DISEASE = {"normal fundus", "lens dust", "low image quality", "image offset"}
ODIR_FRACTIONS = {"training": 0.8, "validation": 0.1, "test": 0.1}
REFUGE_FRACTIONS = ODIR_FRACTIONS
IDRID_LESIONS = ("MA", "HE", "EX", "SE")
IDRID_VALIDATION = 0.2
CHESTXRAY_VALIDATION = 0.1
FUNDUS_LABELS = {"0": "normal", "1": "abnormal"}


def _files_by_name(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Every file under ``folder`` with one of ``suffixes``, by file name (hidden folders skipped)."""
    suffixes = tuple(s.lower() for s in suffixes)
    found = {}
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(suffixes):
                found.setdefault(name, Path(root) / name)
    return found


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, f"cannot read the CSV label file ({error})") from error


def _require_columns(path: Path, rows: list[dict], columns: Iterable[str]) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise InputError(path, f"expected columns {list(columns)}; missing {missing or 'all rows'}")


def _image(images: dict[str, Path], name: str, label_file: Path) -> str:
    if name not in images:
        raise InputError(label_file, f"names the image {name!r}, which is not under the dataset folder")
    return str(images[name])


def _grade(row: dict, column: str, grades: int, label_file: Path) -> int:
    """The integer grade in ``column`` of a label-file row, checked to be one of 0 .. grades - 1."""
    text = row[column]
    try:
        value = int(float(text))
    except ValueError:
        value = None
    if value is None or value != float(text) or not 0 <= value < grades:
        raise InputError(label_file, f"image {row.get('Image name', '?')!r} has {column} = {text!r}; expected an "
                                     f"integer from 0 to {grades - 1}")
    return value


def _manifest(name: str, kind: str, description: str, entries: list[dict], split_of_subject: dict) -> dict:
    return {"name": name, "description": description, "kind": kind, "tensorImageSize": "2D", "labels": FUNDUS_LABELS,
            **assign_splits(entries, split_of_subject)}


def scan_odir(directory: str | os.PathLike, seed: int = 0) -> dict:
    folder = dataset_folder(directory)
    label_files = sorted(p for p in folder.rglob("*.csv") if not p.name.startswith("."))
    if not label_files:
        raise InputError(folder, "no CSV annotation found; save ODIR's annotation .xlsx as CSV (columns ID, "
                                 "Left-Fundus, Right-Fundus, Left-/Right-Diagnostic Keywords, N, D, ...) in the folder")
    label_file = label_files[0]
    rows = _read_csv(label_file)
    _require_columns(label_file, rows, ("ID", "Left-Fundus", "Right-Fundus"))
    images = _files_by_name(folder)
    entries = []
    for row in rows:
        for side in ("Left", "Right"):
            keywords_column = f"{side}-Diagnostic Keywords"
            if keywords_column in row:
                keywords = {k.strip().lower() for k in re.split(r"[，,;]", row[keywords_column]) if k.strip()}
                abnormal = int(not ("normal fundus" in keywords and keywords <= ODIR_NON_DISEASE))
            elif "N" in row:
                abnormal = int(row["N"] != "1")
            else:
                raise InputError(label_file, "needs Left-/Right-Diagnostic Keywords or an N column for the labels")
            entries.append({"image": _image(images, row[f"{side}-Fundus"], label_file), "abnormal": abnormal,
                            "subject": f"odir_{row['ID']}", "site": "ODIR", "sequence": "fundus"})
    splits = subject_level_split([e["subject"] for e in entries], ODIR_FRACTIONS, seed)
    return {**_manifest("OIA-ODIR", "odir", "ODIR fundus photographs, any disease vs normal per eye; patients split "
                        "80/10/10", entries, subjects_to_splits(splits)), "seed": int(seed)}


def scan_idrid(directory: str | os.PathLike, seed: int = 0) -> dict:
    folder = dataset_folder(directory)
    images = _files_by_name(folder, (".jpg", ".jpeg", ".png"))
    masks = _files_by_name(folder, (".tif", ".tiff"))
    entries, official = [], {}
    for label_file in sorted(folder.rglob("*Labels.csv")):
        split = "test" if "testing" in label_file.name.lower() else "training"
        rows = _read_csv(label_file)
        _require_columns(label_file, rows, ("Image name", "Retinopathy grade", "Risk of macular edema"))
        for row in rows:
            name = row["Image name"]
            dr_grade = _grade(row, "Retinopathy grade", DR_GRADES, label_file)
            dme_grade = _grade(row, "Risk of macular edema", DME_GRADES, label_file)
            entries.append({"image": _image(images, name if "." in name else f"{name}.jpg", label_file),
                            "abnormal": int(dr_grade > 0 or dme_grade > 0), "dr_grade": dr_grade,
                            "dme_grade": dme_grade, "subject": f"idrid_{name}", "site": "IDRiD", "sequence": "fundus"})
            official[entries[-1]["subject"]] = split
    pattern = re.compile(r"^(IDRiD_\d+)\.jpe?g$", re.IGNORECASE)
    for name, path in sorted(images.items()):
        match = pattern.match(name)
        if not match or "segmentation" not in str(path).lower():
            continue
        lesion_masks = [str(masks[f"{match.group(1)}_{lesion}.tif"]) for lesion in IDRID_LESIONS
                        if f"{match.group(1)}_{lesion}.tif" in masks]
        if not lesion_masks:
            raise InputError(path, f"no lesion masks {match.group(1)}_{{{','.join(IDRID_LESIONS)}}}.tif found")
        subject = f"idrid_seg_{match.group(1)}"
        entries.append({"image": str(path), "mask": lesion_masks, "abnormal": 1, "subject": subject,
                        "site": "IDRiD", "sequence": "fundus"})
        official[subject] = "test" if "testing" in str(path).lower() else "training"
    if not entries:
        raise InputError(folder, "no IDRiD grading label CSVs or segmentation images (IDRiD_XX.jpg) found")
    training = sorted(s for s, split in official.items() if split == "training")
    held_out = subject_level_split(training, {"training": 1 - IDRID_VALIDATION, "validation": IDRID_VALIDATION},
                                   seed)["validation"]
    split_of = {s: ("validation" if s in set(held_out) else split) for s, split in official.items()}
    return {**_manifest("IDRiD", "idrid", "IDRiD grading (dr_grade 0-4, dme_grade 0-2; abnormal: either > 0) and "
                        "lesion segmentation (MA, HE, EX, SE joined); official test set, 20 % of training for "
                        "validation",
                        entries, split_of), "seed": int(seed)}


def scan_refuge(directory: str | os.PathLike, seed: int = 0) -> dict:
    folder = dataset_folder(directory)
    masks = _files_by_name(folder, (".bmp", ".png"))
    entries = []
    for class_folder, abnormal in (("Glaucoma", 1), ("Non-Glaucoma", 0)):
        for path in sorted(folder.rglob(f"{class_folder}/*")):
            inside = [part.lower() for part in path.relative_to(folder).parts[:-1]]
            if path.suffix.lower() not in (".jpg", ".jpeg") or any("mask" in p or "annotation" in p for p in inside):
                continue
            entry = {"image": str(path), "abnormal": abnormal, "subject": f"refuge_{path.stem}", "site": "REFUGE",
                     "sequence": "fundus"}
            mask = masks.get(f"{path.stem}.bmp") or masks.get(f"{path.stem}.png")
            if mask is not None:
                entry.update(mask=str(mask), mask_background_value=255)
            entries.append(entry)
    if not entries:
        raise InputError(folder, "no images under Glaucoma/ or Non-Glaucoma/ folders (REFUGE Training400 layout)")
    splits = subject_level_split([e["subject"] for e in entries], REFUGE_FRACTIONS, seed)
    return {**_manifest("REFUGE", "refuge", "REFUGE glaucoma vs non-glaucoma with optic disc masks; split 80/10/10",
                        entries, subjects_to_splits(splits)), "seed": int(seed)}


def scan_chestxray14(directory: str | os.PathLike, seed: int = 0) -> dict:
    folder = dataset_folder(directory)
    label_files = sorted(folder.rglob("Data_Entry_2017*.csv"))
    if not label_files:
        raise InputError(folder, "Data_Entry_2017.csv not found (NIH ChestX-ray14 layout)")
    rows = _read_csv(label_files[0])
    _require_columns(label_files[0], rows, ("Image Index", "Finding Labels", "Patient ID"))
    images = _files_by_name(folder, (".png",))

    def names(list_name: str) -> set[str]:
        found = sorted(folder.rglob(list_name))
        return set(found[0].read_text().split()) if found else set()

    test_names = names("test_list.txt")
    entries, official = [], {}
    for row in rows:
        subject = f"cxr14_{int(row['Patient ID']):05d}"
        entries.append({"image": _image(images, row["Image Index"], label_files[0]),
                        "abnormal": int(row["Finding Labels"] != "No Finding"), "subject": subject,
                        "site": "ChestX-ray14", "sequence": "xray"})
        if row["Image Index"] in test_names:
            official[subject] = "test"
        official.setdefault(subject, "training")
    training = sorted(s for s, split in official.items() if split == "training")
    held_out = set(subject_level_split(training, {"training": 1 - CHESTXRAY_VALIDATION,
                                                  "validation": CHESTXRAY_VALIDATION}, seed)["validation"])
    split_of = {s: ("validation" if s in held_out else split) for s, split in official.items()}
    manifest = _manifest("ChestX-ray14", "chestxray14", "NIH ChestX-ray14, any finding vs No Finding; official "
                         "test list, 10 % of train-val patients for validation", entries, split_of)
    return {**manifest, "labels": {"0": "no finding", "1": "finding"}, "seed": int(seed)}
