"""Read a folder of cardiac MR DICOM files as series, label each series' sequence class from its headers, and keep the
central slices as 84 x 84 images: what ``mri-ssl manifest dicom DIR`` and the bundle's DICOM inference use.

Reading
    Every file under the folder is read with pydicom (headers first, ``stop_before_pixels``). Files that are not
    DICOM, are truncated or corrupt, hold no image, or are not MR are *skipped and reported by name* with the reason
    (``SkippedFile``); the scan goes on. Pixel data are decoded only for the slices kept, and a file whose pixels
    cannot be decoded (e.g. pydicom's ``MR_truncated.dcm``) is skipped the same way.

Series and slices
    Files are grouped by SeriesInstanceUID. Slice positions come from ImagePositionPatient projected on the slice
    normal (from ImageOrientationPatient), else SliceLocation, else InstanceNumber. Of the distinct positions, the
    central ``fraction`` (20 % as in the paper, at least one) are kept, with every image at those positions (all
    cine phases). Each kept image is rescaled (RescaleSlope / Intercept) and resampled to ``size`` x ``size`` by
    area averaging (``torch.nn.functional.interpolate(mode="area")``, what MONAI's ``Resized(mode="area")`` does).

Labels from headers (``label_series``), first rule that applies
    1. SeriesDescription / ProtocolName keywords (case-insensitive), checked in the order of ``DESCRIPTION_RULES``:
       maps, perfusion, scouts, diffusion -> Other; LGE / PSIR / delayed enhancement -> LGE; cine / SSFP vendor
       names -> Cine; T2 / STIR -> T2; T1 -> T1.
    2. Temporal phases: more than one (CardiacNumberOfImages > 1, or several TriggerTimes at one position) -> Cine.
    3. ScanningSequence with IR and GR, or a gradient echo with an InversionTime -> LGE.
    4. Spin echo (SE without GR or IR): TE >= 60 ms and TR >= 1500 ms -> T2; TE <= 30 ms and TR <= 1000 ms -> T1.
    Otherwise the series is unlabeled (kept for self-supervised pretraining, left out of supervised training).
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from mri_ssl.data.splits import subject_level_split
from mri_ssl.errors import InputError
from mri_ssl.io.images import decode_dicom
from mri_ssl.physics.cardiac import SEQUENCE_CLASSES

logger = logging.getLogger(__name__)

CENTRAL_FRACTION = 0.2
IMAGE_SIZE = 84
MR_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1")

# (class, keywords): the first class with a keyword inside the lower-cased SeriesDescription or ProtocolName wins.
# Maps and scouts come first because their names often also contain "t1" / "t2" / "ssfp".
DESCRIPTION_RULES = (
    ("Other", ("map", "molli", "shmolli", "sasha", "perf", "scout", "localizer", "localiser", "survey", "3-plane",
               "3plane", "tri-pilot", "dwi", "diffusion", "t2*", "t2star", "flow", "phase contrast")),
    ("LGE", ("lge", "psir", "late gad", "delayed enh", "delayed_enh", "mde", "viability", "scar", "de_", " de ")),
    ("Cine", ("cine", "ssfp", "fiesta", "trufi", "truefisp", "bffe", "b-ffe", "b_ffe", "balanced")),
    ("T2", ("t2", "stir", "tirm")),
    ("T1", ("t1",)),
)


@dataclass
class SkippedFile:
    """A file the scan could not use, and why."""

    path: str
    problem: str


@dataclass
class DicomImage:
    path: Path
    position: float
    trigger_time: float | None
    instance: int


@dataclass
class DicomSeries:
    """One series: its identifiers, images (sorted by position then trigger time), label and why."""

    uid: str
    patient: str
    description: str
    site: str
    images: list[DicomImage] = field(default_factory=list)
    headers: object = None  # the first file's header dataset
    label: str | None = None
    label_source: str = "unlabeled"
    phases: int = 1

    @property
    def positions(self) -> list[float]:
        return sorted({round(image.position, 3) for image in self.images})


def _float(value, default=None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _position(dataset) -> float:
    position = dataset.get("ImagePositionPatient")
    orientation = dataset.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6:
        normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
        return float(np.dot(normal, np.array(position, float)))
    location = _float(dataset.get("SliceLocation"))
    if location is not None:
        return location
    return float(_float(dataset.get("InstanceNumber"), 0.0))


def _files(directory: Path) -> Iterable[Path]:
    for root, folders, names in os.walk(directory):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(root) / name


def read_series(directory: str | os.PathLike, progress: bool = False) -> tuple[list[DicomSeries], list[SkippedFile]]:
    """Group the MR image files under ``directory`` by series; return ``(series, skipped files)``."""
    import pydicom
    from tqdm.auto import tqdm

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "DICOM folder not found")
    series: dict[str, DicomSeries] = {}
    skipped = []
    for path in tqdm(list(_files(directory)), desc="reading DICOM headers", unit="file", disable=not progress):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            skipped.append(SkippedFile(str(path), "not a DICOM file"))
            continue
        except Exception as error:  # truncated or corrupt headers: pydicom raises several types
            skipped.append(SkippedFile(str(path), f"unreadable DICOM ({type(error).__name__}: {error})"))
            continue
        modality = str(dataset.get("Modality", ""))
        if modality != "MR":
            skipped.append(SkippedFile(str(path), f"not an MR image (Modality {modality or 'missing'})"))
            continue
        if "Rows" not in dataset or "Columns" not in dataset:
            skipped.append(SkippedFile(str(path), "no image (Rows / Columns missing)"))
            continue
        uid = str(dataset.get("SeriesInstanceUID", "")) or f"no-series-uid:{path.parent}"
        if uid not in series:
            series[uid] = DicomSeries(
                uid=uid, patient=str(dataset.get("PatientID", "")) or "unknown",
                description=str(dataset.get("SeriesDescription", "") or dataset.get("ProtocolName", "") or ""),
                site=str(dataset.get("InstitutionName", "") or dataset.get("Manufacturer", "") or "dicom"),
                headers=dataset)
        series[uid].images.append(DicomImage(path, _position(dataset), _float(dataset.get("TriggerTime")),
                                             int(_float(dataset.get("InstanceNumber"), 0))))
    result = []
    for item in series.values():
        item.images.sort(key=lambda image: (round(image.position, 3), image.trigger_time or 0.0, image.instance))
        item.phases = _temporal_phases(item)
        item.label, item.label_source = label_series(item)
        result.append(item)
    for problem in skipped:
        logger.warning("skipped %s: %s", problem.path, problem.problem)
    return sorted(result, key=lambda s: (s.patient, s.uid)), skipped


def _temporal_phases(series: DicomSeries) -> int:
    declared = int(_float(series.headers.get("CardiacNumberOfImages"), 0) or 0)
    per_position = defaultdict(set)
    for image in series.images:
        if image.trigger_time is not None:
            per_position[round(image.position, 3)].add(image.trigger_time)
    counted = max((len(times) for times in per_position.values()), default=1)
    return max(declared, counted, 1)


def label_series(series: DicomSeries) -> tuple[str | None, str]:
    """The sequence class of a series from its headers and the rule that decided it (see the module docstring)."""
    headers = series.headers
    text = " ".join(str(headers.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")).lower()
    text = " " + re.sub(r"\s+", " ", text) + " "  # padded, so " de " also matches at either end
    for sequence_class, keywords in DESCRIPTION_RULES:
        for keyword in keywords:
            if keyword in text:
                return sequence_class, f"description contains {keyword.strip()!r}"
    if series.phases > 1:
        return "Cine", f"{series.phases} temporal phases"
    scanning = {str(v).upper() for v in np.atleast_1d(headers.get("ScanningSequence", []) or [])}
    inversion = _float(headers.get("InversionTime"), 0.0) or 0.0
    if "GR" in scanning and ("IR" in scanning or inversion > 0):
        return "LGE", f"inversion-recovery gradient echo (ScanningSequence {sorted(scanning)}, TI {inversion:g} ms)"
    te, tr = _float(headers.get("EchoTime")), _float(headers.get("RepetitionTime"))
    if scanning == {"SE"} and te is not None and tr is not None:
        if te >= 60 and tr >= 1500:
            return "T2", f"spin echo with long TE {te:g} ms and TR {tr:g} ms"
        if te <= 30 and tr <= 1000:
            return "T1", f"spin echo with short TE {te:g} ms and TR {tr:g} ms"
    return None, "unlabeled"


def central_images(series: DicomSeries, fraction: float = CENTRAL_FRACTION) -> list[DicomImage]:
    """The images at the central ``fraction`` of the series' slice positions (at least one position)."""
    if not 0.0 < float(fraction) <= 1.0:
        raise InputError("fraction", f"expected a fraction in (0, 1], got {fraction!r}")
    positions = series.positions
    keep = max(1, int(round(fraction * len(positions))))
    start = (len(positions) - keep) // 2
    chosen = set(positions[start:start + keep])
    return [image for image in series.images if round(image.position, 3) in chosen]


def load_image(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """One DICOM image as float32 ``(size, size)``: rescaled to stored units, area-resampled; a multi-frame file gives
    its middle frame. Decoded by ``mri_ssl.io.images.decode_dicom`` (the reader the data checks use), so a file
    whose pixels cannot be decoded raises an ``InputError`` naming it."""
    dataset, pixels = decode_dicom(path)
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[pixels.shape[0] // 2]
    if pixels.ndim != 2:
        raise InputError(path, f"expected a 2-D grey image, got pixel array of shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise InputError(path, "pixel data hold NaN or Inf")
    tensor = torch.as_tensor(pixels)[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=(int(size), int(size)), mode="area")
    return resized[0, 0].numpy()


def pixel_spacing_mm(series: DicomSeries, size: int = IMAGE_SIZE) -> tuple[float, float]:
    """Pixel size after resampling to ``size`` x ``size`` (1 mm where the header does not say)."""
    headers = series.headers
    spacing = headers.get("PixelSpacing") or [1.0, 1.0]
    rows, columns = int(headers.get("Rows", size)), int(headers.get("Columns", size))
    return float(spacing[0]) * rows / size, float(spacing[1]) * columns / size


def series_images(series: DicomSeries, fraction: float = CENTRAL_FRACTION, size: int = IMAGE_SIZE
                  ) -> tuple[list[tuple[DicomImage, np.ndarray]], list[SkippedFile]]:
    """Decode the central images of a series; undecodable files are returned as skipped, not raised."""
    images, skipped = [], []
    for image in central_images(series, fraction):
        try:
            images.append((image, load_image(image.path, size)))
        except InputError as error:
            skipped.append(SkippedFile(str(image.path), error.problem))
            logger.warning("skipped %s: %s", image.path, error.problem)
    return images, skipped


def scan_dicom(directory: str | os.PathLike, images_dir: str | os.PathLike, seed: int = 0,
               fraction: float = CENTRAL_FRACTION, size: int = IMAGE_SIZE, progress: bool = True) -> dict:
    """Scan ``directory`` into a classification manifest; write the kept images as NIfTI files under ``images_dir``.

    Returns the manifest (absolute paths) with patient-level 70 / 10 / 20 % splits, ``labels`` (class index ->
    name), the count of ``unlabeled`` images and the ``skipped`` files with their problems.
    """
    import nibabel as nib
    from tqdm.auto import tqdm

    all_series, skipped = read_series(directory, progress=progress)
    images_dir = Path(images_dir)
    entries = []
    for series in tqdm(all_series, desc="converting series", unit="series", disable=not progress):
        images, failed = series_images(series, fraction, size)
        skipped.extend(failed)
        spacing = pixel_spacing_mm(series, size)
        affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
        safe_uid = re.sub(r"[^0-9A-Za-z.]+", "_", series.uid)[-40:]
        safe_patient = re.sub(r"[^0-9A-Za-z._-]+", "_", series.patient)
        for index, (image, pixels) in enumerate(images):
            path = images_dir / safe_patient / f"{safe_uid}_{index:03d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(pixels, affine), str(path))
            entry = {"image": str(path), "subject": series.patient, "site": series.site,
                     "sequence": series.label or "unlabeled", "series": series.uid,
                     "series_description": series.description, "label_source": series.label_source,
                     "source_file": str(image.path)}
            if series.label is not None:
                entry["class_index"] = SEQUENCE_CLASSES.index(series.label)
            entries.append(entry)
    if not entries:
        problems = "; ".join(f"{Path(s.path).name}: {s.problem}" for s in skipped[:5])
        raise InputError(directory, f"no readable MR image series found{' (' + problems + ')' if problems else ''}")
    splits = subject_level_split([e["subject"] for e in entries], {"training": 0.7, "validation": 0.1, "test": 0.2},
                                 seed=seed)
    split_of = {subject: split for split, members in splits.items() for subject in members}
    manifest = {
        "name": "cardiac MR DICOM", "kind": "dicom", "seed": int(seed), "tensorImageSize": "2D",
        "description": f"central {fraction:.0%} of slices of each MR series under {Path(directory).resolve()}, "
                       f"{size}x{size}, sequence class from the headers",
        "labels": {str(i): name for i, name in enumerate(SEQUENCE_CLASSES)},
        "unlabeled": sum("class_index" not in e for e in entries),
        "skipped": [{"file": s.path, "problem": s.problem} for s in skipped],
    }
    for split in ("training", "validation", "test"):
        manifest[split] = [e for e in entries if split_of[e["subject"]] == split]
    return manifest
