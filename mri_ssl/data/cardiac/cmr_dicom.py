"""``mri-ssl manifest cmr DIR``: a folder of DICOM CMR studies, one report text file each, as a video-text manifest.

Layout: ``DIR/<study>/`` holds the study's DICOM files (any sub-folders) and exactly one ``*.txt`` file, the report
impression. Series are grouped and classified by ``mri_ssl.data.cardiac.dicom_series`` (headers, then description
keywords); only Cine and LGE series are kept. View: ``lax`` when the description names a long-axis view (lax, long,
2ch, 3ch, 4ch, ch2/3/4), ``sax`` when it names the short axis (sax, short), otherwise ``sax`` for a multi-slice series
and ``lax`` for a single slice. Frames: a cine series gives its central slice position over all trigger times, an
LGE series one image per slice position (base to apex). Each series is written as a NIfTI ``(size, size, frames)``
under ``images_dir``; the manifest has the format of ``mri_ssl.data.cardiac.cmr_studies`` (no disease labels) with
study-level 60/20/20 splits. Studies without a report or without Cine/LGE series are listed under ``skipped``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from mri_ssl.data.cardiac.cmr_studies import CMR_MANIFEST_KIND, SPLIT_FRACTIONS
from mri_ssl.data.cardiac.dicom_series import IMAGE_SIZE, label_series, load_image, read_series
from mri_ssl.data.splits import subject_level_split
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json

_LAX = re.compile(r"\b(lax|long|[234] ?ch|ch ?[234])\b")
_SAX = re.compile(r"\b(sax|short)\b")


def series_view(description: str, positions: int) -> str:
    """``lax`` or ``sax`` from the series description, else from the number of slice positions."""
    text = description.lower().replace("_", " ")
    if _LAX.search(text):
        return "lax"
    if _SAX.search(text):
        return "sax"
    return "sax" if positions > 1 else "lax"


def series_frames(series, kind: str) -> list:
    """The images that make the series' frames: cine -> central position over time; LGE -> one per position."""
    positions = series.positions
    if kind == "cine":
        centre = positions[len(positions) // 2]
        chosen = [im for im in series.images if round(im.position, 3) == centre]
        return sorted(chosen, key=lambda im: (im.trigger_time or 0.0, im.instance))
    first = {}
    for image in sorted(series.images, key=lambda im: (im.position, im.trigger_time or 0.0, im.instance)):
        first.setdefault(round(image.position, 3), image)
    return [first[p] for p in positions]


def scan_cmr_dicom(directory: str | os.PathLike, images_dir: str | os.PathLike, seed: int = 0,
                   size: int = IMAGE_SIZE) -> dict:
    """Scan ``directory`` (one sub-folder per study) and return the manifest (also written by ``write``)."""
    directory, images_dir = Path(directory), Path(images_dir)
    if not directory.is_dir():
        raise InputError(str(directory), "CMR study folder not found")
    studies, skipped = [], []
    for study_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        reports = sorted(study_dir.glob("*.txt"))
        if len(reports) != 1:
            skipped.append({"file": str(study_dir), "problem": f"expected one report .txt file, found {len(reports)}"})
            continue
        report = reports[0].read_text(errors="replace").strip()
        if not report:
            skipped.append({"file": str(reports[0]), "problem": "empty report"})
            continue
        found, bad = read_series(study_dir)
        skipped += [{"file": str(b.path), "problem": b.problem} for b in bad if Path(b.path).suffix != ".txt"]
        entries = []
        for series in found:
            label, _ = label_series(series)
            if label not in ("Cine", "LGE"):
                continue
            kind = label.lower()
            images = series_frames(series, kind)
            frames = np.stack([load_image(im.path, size) for im in images], axis=-1).astype(np.float32)
            view = series_view(series.description, len(series.positions))
            name = f"{study_dir.name}/{kind}_{view}_{len(entries)}.nii.gz"
            (images_dir / study_dir.name).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(frames, np.eye(4)), str(images_dir / name))
            entries.append({"type": kind, "view": view, "file": name, "num_frames": int(frames.shape[-1]),
                            "description": series.description})
        if not entries:
            skipped.append({"file": str(study_dir), "problem": "no Cine or LGE series"})
            continue
        studies.append({"study_id": study_dir.name, "series": entries, "report": report})
    if not studies:
        raise InputError(str(directory), "no usable study (a folder with DICOM Cine/LGE series and one report .txt)")
    manifest = {"kind": CMR_MANIFEST_KIND, "description": f"DICOM CMR studies scanned from {directory}",
                "seed": int(seed), "studies": studies, "skipped": skipped}
    manifest.update(subject_level_split([s["study_id"] for s in studies], SPLIT_FRACTIONS, seed=int(seed)))
    return manifest


def write_cmr_dicom_manifest(directory, images_dir, seed: int = 0, size: int = IMAGE_SIZE) -> Path:
    """Scan and write ``images_dir/manifest.json`` (series files are relative to it, as the bundle expects)."""
    manifest = scan_cmr_dicom(directory, images_dir, seed, size)
    return save_json(manifest, Path(images_dir) / "manifest.json")
