"""Scan a local copy of a dataset and write a decathlon-style datalist (a *manifest*) that the bundles train on.

A manifest is the JSON ``monai.data.load_decathlon_datalist`` reads::

    {"name": ..., "description": ..., "kind": "ixi", "seed": 0, "labels": {"0": "background", ...},
     "training": [{"image": ..., "label": ..., "subject": ..., "site": ..., "sequence": ...}, ...],
     "validation": [...], "test": [...]}

Scanners (``SCANNERS``: one registry over the modules ``brain``, ``cardiac`` and ``photo``) return that dict with
absolute paths; ``write_manifest`` makes a path relative to the manifest's folder only when the file lies under that
folder, so a manifest written beside the data can be moved with it, and one written elsewhere (``data_manifests/``)
points at the data wherever it is. Splits are subject-level and seeded (``mri_ssl.data.splits``). The formats are
documented in ``data_manifests/README.md``; the JSON schema is package data (``schema.json`` beside this file), so
an installed copy validates manifests as a source checkout does.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping

import jsonschema

from mri_ssl.data.manifests.brain import scan_arc, scan_demo, scan_ixi, scan_qmri
from mri_ssl.data.manifests.cardiac import scan_dicom_folder
from mri_ssl.data.manifests.common import PATH_KEYS, SPLITS, dataset_folder
from mri_ssl.data.manifests.photo import scan_chestxray14, scan_idrid, scan_odir, scan_refuge
from mri_ssl.data.splits import check_disjoint_subjects
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json

SCHEMA_PATH = Path(__file__).resolve().with_name("schema.json")  # package data (setup.cfg)

# One registry of the scanners of ``mri-ssl manifest KIND``: brain MRI, cardiac DICOM, 2-D photographs.
SCANNERS: dict[str, Callable[..., dict]] = {
    "ixi": scan_ixi, "arc": scan_arc, "qmri": scan_qmri, "demo": scan_demo,
    "dicom": scan_dicom_folder,
    "odir": scan_odir, "idrid": scan_idrid, "refuge": scan_refuge, "chestxray14": scan_chestxray14,
}
PHOTO_KINDS = ("odir", "idrid", "refuge", "chestxray14")


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
    """Check ``manifest`` against the manifest schema (``SCHEMA_PATH``); raise ``InputError(source, ...)`` if it fails.

    The error names the place in the manifest (e.g. ``training/3``) and what is wrong there.
    """
    schema_path = Path(schema_path) if schema_path is not None else SCHEMA_PATH
    try:
        schema = json.loads(schema_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(schema_path, f"cannot read the manifest schema ({error}); the installation is incomplete") \
            from error
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
        dataset_folder(directory)
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
