"""Data integrity checks: read every file of every case completely and check it before any training starts.

What the usual tools let through (measured for issue 9): SimpleITK zero-fills a truncated .nii.gz and turns NaN into
0; nibabel raises a bare ``EOFError`` and misses a flipped byte inside a gzip stream (it never reads to the CRC); a
68-byte .nii.gz whose header claims 4000^3 voxels makes nibabel try to allocate ~256 GB; MONAI rewrites a NaN sform
and crops a label two voxels shorter than its image. Here:

* every file is read completely and checked on its own by ``mri_ssl.io.images`` (``read_image``: gzip CRC, size
  before allocating, dimensions, finite voxels, geometry);
* ``check_case`` checks the files of one datalist entry together: same spatial shape and affine (within
  ``AFFINE_TOLERANCE_MM``) across every channel / map / label, label values among the declared classes, qMRI maps
  in physical ranges (``QMRI_RANGES``);
* ``check_data`` runs ``check_case`` over the splits of a datalist, adds the dataset-level check that no subject is
  in two splits, and returns an ``IntegrityReport`` (a per-case table, JSON, ``raise_on_error``). Bundles call
  ``check_data(...).raise_on_error()`` in ``initialize``; ``mri-ssl check-data MANIFEST`` prints the table.

Every failure is a ``DataIntegrityError`` (an ``InputError``) naming the file, the check (one of ``CHECKS``) and the
offending value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from mri_ssl.data.splits import DEFAULT_SPLITS, check_disjoint_subjects
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text
from mri_ssl.io.hashing import sha256_file
from mri_ssl.io.images import CHECKS, DEFAULT_MAX_BYTES, CheckedImage, DataIntegrityError, is_image_path, read_image

logger = logging.getLogger(__name__)

# Affines of files of one case must agree to this tolerance (mm), as scanner exports differ in float rounding.
AFFINE_TOLERANCE_MM = 1e-3
# Physical ranges of qMRI maps: (low, low inclusive, high or None, high inclusive, unit sentence). R1 = 0 (T1
# infinite) is allowed as it is the usual value of masked background; above 10 1/s (T1 < 100 ms) no tissue is.
QMRI_RANGES = {
    "pd": (0.0, True, None, True, "proton density must be >= 0"),
    "r1": (0.0, True, 10.0, True, "R1 must be in [0, 10] 1/s (T1 >= 100 ms; 0 for masked background)"),
    "r2s": (0.0, True, 1000.0, True, "R2* must be in [0, 1000] 1/s"),
    "r2": (0.0, True, 1000.0, True, "R2 must be in [0, 1000] 1/s"),
    "mt": (0.0, True, 1.0, False, "MT saturation must be a fraction in [0, 1) (divide a map in percent by 100)"),
    "b1": (0.0, True, None, True, "the B1 / receive field must be >= 0"),
}

# ----------------------------------------------------------------------------------------------------------------
# value checks


def check_physical_range(path: str | os.PathLike, map_name: str, data: np.ndarray) -> None:
    """Raise ``DataIntegrityError`` (check ``physical_range``) if a qMRI map leaves its ``QMRI_RANGES`` range."""
    low, low_inclusive, high, high_inclusive, sentence = QMRI_RANGES[map_name]
    bad = (data < low) if low_inclusive else (data <= low)
    if high is not None:
        bad |= (data > high) if high_inclusive else (data >= high)
    if bad.any():
        values = data[bad]
        raise DataIntegrityError(path, "physical_range", f"{map_name} map: {sentence}; {int(bad.sum())} voxel(s) "
                                                         f"outside, from {float(values.min()):.6g} to "
                                                         f"{float(values.max()):.6g}",
                                 [float(values.min()), float(values.max())])


def check_label_values(path: str | os.PathLike, label: np.ndarray, allowed: Iterable[int]) -> None:
    """Raise ``DataIntegrityError`` (check ``label_values``) for values not in ``allowed`` (fractions included)."""
    allowed = {int(v) for v in allowed}
    # Compared as floats, so a fractional value (an interpolated label) is caught too.
    unexpected = [int(v) if float(v).is_integer() else float(v) for v in np.unique(label).tolist() if v not in allowed]
    if unexpected:
        raise DataIntegrityError(path, "label_values", f"label values {unexpected[:10]} are not among the declared "
                                                       f"classes {sorted(allowed)}", unexpected[:10])


# ----------------------------------------------------------------------------------------------------------------
# cases and datalists


@dataclass
class Finding:
    """One result of a check: ``status`` is ``error`` or ``warning``; ``file`` what it is about."""

    file: str
    check: str
    status: str
    message: str
    value: object = None

    @classmethod
    def from_error(cls, error: DataIntegrityError) -> "Finding":
        return cls(error.source, error.check, "error", str(error), _plain(error.value))

    def as_error(self, more: str = "") -> DataIntegrityError:
        """The finding as the ``DataIntegrityError`` a loader raises (``more`` is appended to the problem)."""
        problem = self.message
        if problem.startswith(f"{self.file}: "):
            problem = problem[len(self.file) + 2:]
        return DataIntegrityError(self.file, self.check, problem.rsplit(" [check: ", 1)[0] + more, self.value)


def _plain(value):
    """A JSON-friendly copy of a check value."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


@dataclass
class CaseReport:
    """The findings of one datalist entry (``split``, ``index``, ``subject``)."""

    split: str
    index: int
    subject: str | None
    files: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        statuses = {finding.status for finding in self.findings}
        return "error" if "error" in statuses else "warning" if "warning" in statuses else "ok"


def check_case(files: Mapping[str, str | os.PathLike], label_key: str | None = None,
               label_values: Iterable[int] | None = None, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES, map_keys: Iterable[str] = tuple(QMRI_RANGES)
               ) -> tuple[list[Finding], dict[str, CheckedImage]]:
    """Check the files of one case together; return ``(findings, images that passed the per-file checks)``.

    Args:
        files: datalist key -> file path, e.g. ``{"image": ..., "label": ...}`` or ``{"pd": ..., "r1": ...}``.
        label_key: the key of the label map (its values are checked against ``label_values``).
        label_values: the declared classes; None skips the value check.
        spatial_dims: spatial dimensions every file must have (None: any).
        max_bytes: memory cap per file.
        map_keys: keys that are qMRI maps, checked against ``QMRI_RANGES``.

    Every file is read even when another fails, so a report lists all problems of a case at once, in the order:
    per-file checks, then geometry agreement (the first file read is the reference for ``shape_match`` /
    ``affine_match``), then values (``physical_range``, ``label_values``).
    """
    findings: list[Finding] = []
    images: dict[str, CheckedImage] = {}
    map_keys = set(map_keys)
    for key, path in files.items():
        try:
            image = read_image(path, spatial_dims=spatial_dims, max_bytes=max_bytes)
        except DataIntegrityError as error:
            findings.append(Finding.from_error(error))
            continue
        images[key] = image
        if image.data.size and float(image.data.min()) == float(image.data.max()) and key != label_key:
            findings.append(Finding(str(path), "constant", "warning",
                                    f"{path}: every voxel is {float(image.data.min()):.6g}; intensity normalisation "
                                    f"will give zeros"))
        if key == label_key and image.data.size and not image.data.any():
            findings.append(Finding(str(path), "empty_label", "warning", f"{path}: label has background only"))
    reference = next(iter(images.items()), None)
    for key, image in images.items():
        if reference is None or key == reference[0]:
            continue
        reference_key, reference_image = reference
        role = "label" if key == label_key else f"{key}"
        if image.spatial_shape != reference_image.spatial_shape:
            findings.append(Finding.from_error(DataIntegrityError(
                image.path, "shape_match", f"{role} shape {image.spatial_shape} differs from "
                                           f"{reference_key} {reference_image.path} {reference_image.spatial_shape}",
                [list(image.spatial_shape), list(reference_image.spatial_shape)])))
        elif not np.allclose(image.affine, reference_image.affine, atol=AFFINE_TOLERANCE_MM):
            difference = float(np.abs(image.affine - reference_image.affine).max())
            findings.append(Finding.from_error(DataIntegrityError(
                image.path, "affine_match",
                f"{role} affine differs from that of {reference_key} {reference_image.path} by up to "
                f"{difference:.4g} mm:\n{image.affine}\nvs\n{reference_image.affine}", difference)))
    # Values last: a geometry mismatch is the more basic problem to report first.
    for key, image in images.items():
        try:
            if key in map_keys and key in QMRI_RANGES:
                check_physical_range(image.path, key, image.data)
            if key == label_key and label_values is not None:
                check_label_values(image.path, image.data, label_values)
        except DataIntegrityError as error:
            findings.append(Finding.from_error(error))
    return findings, images


@dataclass
class IntegrityReport:
    """Per-case findings plus dataset-level ones (``split_leak``, ``duplicate_file``, ``entry``) for one datalist."""

    datalist: str
    cases: list[CaseReport] = field(default_factory=list)
    dataset_findings: list[Finding] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return self.dataset_findings + [finding for case in self.cases for finding in case.findings]

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.status == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.status == "warning"]

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "warning": 0, "error": 0}
        for case in self.cases:
            counts[case.status] += 1
        return counts

    def as_dict(self) -> dict:
        return {
            "datalist": self.datalist,
            "checks": CHECKS,
            "summary": {"cases": len(self.cases), **self.counts(), "dataset_errors": sum(
                finding.status == "error" for finding in self.dataset_findings)},
            "dataset": [vars(finding) for finding in self.dataset_findings],
            "cases": [{"split": case.split, "index": case.index, "subject": case.subject, "status": case.status,
                       "files": case.files, "findings": [vars(finding) for finding in case.findings]}
                      for case in self.cases],
        }

    def table(self) -> str:
        """One row per case (and per extra finding): split, index, subject, status, check, file and value."""
        header = ("split", "#", "subject", "status", "check", "detail")
        rows = [("dataset", "-", "-", finding.status, finding.check, _first_line(finding.message))
                for finding in self.dataset_findings]
        for case in self.cases:
            findings = case.findings or [None]
            for finding in findings:
                rows.append((case.split, str(case.index), str(case.subject or "-"),
                             finding.status if finding else "ok", finding.check if finding else "-",
                             _first_line(finding.message) if finding else ""))
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

        def line(row) -> str:
            return "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip()

        counts = self.counts()
        total = (f"{len(self.cases)} cases: {counts['ok']} ok, {counts['warning']} with warnings, {counts['error']} "
                 f"with errors; {sum(f.status == 'error' for f in self.dataset_findings)} dataset-level error(s)")
        return "\n".join([line(header), line(["-" * width for width in widths] + ["-" * 6]),
                          *[line(row) for row in rows], total])

    def raise_on_error(self) -> "IntegrityReport":
        """Raise the first error as ``DataIntegrityError`` (saying how many more there are); log warnings."""
        for finding in self.warnings:
            logger.warning("%s", finding.message)
        errors = self.errors
        if errors:
            more = (f"; and {len(errors) - 1} more problem(s) - run `mri-ssl check-data {self.datalist}` for the "
                    f"full report") if len(errors) > 1 else ""
            raise errors[0].as_error(more)
        return self


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _file_keys(entry: Mapping, keys: Sequence[str] | None) -> list[str]:
    if keys is not None:
        return list(keys)
    return [key for key, value in entry.items() if is_image_path(value)]


def _check_splits(content: Mapping, subject_key: str = "subject") -> list[Finding]:
    entries = [entry for split in DEFAULT_SPLITS for entry in content.get(split) or []]
    if entries and not all(subject_key in entry for entry in entries):
        return [Finding("datalist", "split_leak", "warning", f"entries without a {subject_key!r} key: cannot check "
                                                             f"that no subject is in two splits")]
    try:
        check_disjoint_subjects(content, subject_key=subject_key)
    except InputError as error:
        return [Finding(error.source, "split_leak", "error", str(error))]
    return []


def _owner(case: CaseReport) -> str:
    subject = f"subject {case.subject}" if case.subject is not None else f"entry {case.index}"
    return f"{subject} ({case.split})"


def _shared_file_finding(cases: Sequence[CaseReport], shown: str, how: str) -> Finding | None:
    """A ``duplicate_file`` finding if ``cases`` (that list one file) span two splits (error) or two subjects
    (warning), else None."""
    owners = list(dict.fromkeys(_owner(case) for case in cases))
    if len(owners) < 2:
        return None
    splits = {case.split for case in cases}
    status = "error" if len(splits) > 1 else "warning"
    what = "two splits (a leak between training and evaluation)" if status == "error" else "two subjects"
    return Finding(shown, "duplicate_file", status, f"{shown}: {how} under {what}: {', '.join(owners)}",
                   sorted(splits))


def check_duplicate_files(work: Sequence[tuple[CaseReport, Mapping[str, str]]],
                          skip_keys: Sequence[str] = ()) -> list[Finding]:
    """Findings for files that appear under two splits or two subjects, by real path and by content.

    ``work`` pairs each case with its files (entry key -> path). A real path listed by cases of different subjects
    or splits is found directly; files with different paths but the same bytes (a copy, a hard link) are found by
    sha256, computed only for files whose size equals another's. Keys in ``skip_keys`` (the label map: an empty
    mask or a shared atlas label is legitimately identical across subjects) are not compared.
    """
    by_path: dict[str, list[CaseReport]] = {}
    for case, files in work:
        for key, path in files.items():
            if key not in skip_keys:
                by_path.setdefault(os.path.realpath(path), []).append(case)
    findings = [finding for path, cases in by_path.items()
                if (finding := _shared_file_finding(cases, path, "listed"))]
    by_size: dict[int, list[str]] = {}
    for path in by_path:
        with contextlib.suppress(OSError):  # a missing file is the "exists" check's finding
            by_size.setdefault(os.path.getsize(path), []).append(path)
    by_digest: dict[str, list[str]] = {}
    for paths in by_size.values():
        for path in paths if len(paths) > 1 else []:
            with contextlib.suppress(OSError):
                by_digest.setdefault(sha256_file(path), []).append(path)
    for digest, paths in by_digest.items():
        if len(paths) > 1:
            cases = [case for path in paths for case in by_path[path]]
            finding = _shared_file_finding(cases, " = ".join(paths), f"the same content (sha256 {digest[:12]}...)")
            if finding:
                findings.append(finding)
    return findings


def check_no_split_leak(datalist: str | os.PathLike, subject_key: str = "subject") -> None:
    """Raise ``InputError`` naming the subject and both splits if a subject of the datalist file is in two splits
    (for loaders that check their own files; ``check_data`` reports the same finding in its table). Entries
    without ``subject_key`` cannot be checked and are let through with a logged warning."""
    import json

    for finding in _check_splits(json.loads(Path(datalist).read_text()), subject_key):
        if finding.status == "error":
            raise InputError(datalist, finding.message)
        logger.warning("%s: %s", datalist, finding.message)


def check_data(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation", "test"),
               keys: Sequence[str] | None = None, label_key: str | None = "label",
               label_values: Iterable[int] | None = None, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES, require_keys: Sequence[str] | None = None,
               skip_incomplete: bool = False, progress: bool = False) -> IntegrityReport:
    """Check every case of ``splits`` of a decathlon-style datalist; return the ``IntegrityReport``.

    Args:
        datalist: the datalist / manifest JSON (relative paths are relative to its folder).
        splits: which splits' files to read. Subjects are checked across training / validation / test always.
        keys: the entry keys naming files to check; None: every key whose value ends like an image file.
        label_key: the key of the label map; its values must be in ``label_values``, or, when that is None, in the
            datalist's ``labels`` dict (as ``mri-ssl manifest`` writes it) if it has one.
        spatial_dims: the spatial dimensions every file must have (3 for volumes, 2 for photographs; None: any).
        max_bytes: memory cap per file.
        require_keys: keys every checked entry must have (check ``entry``); default: none.
        skip_incomplete: skip entries lacking one of ``require_keys`` instead (segmentation trains on the labelled
            entries of a manifest that also lists unlabelled images).
        progress: a tqdm bar over the cases.

    Call ``.raise_on_error()`` on the result to stop before training, as the bundles do.
    """
    from monai.data import load_decathlon_datalist
    from tqdm.auto import tqdm

    datalist = Path(datalist)
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise DataIntegrityError(datalist, "readable", f"cannot read the datalist JSON ({error})") from error
    if label_values is None and label_key and isinstance(content.get("labels"), Mapping):
        label_values = [int(value) for value in content["labels"]]
    report = IntegrityReport(str(datalist), dataset_findings=_check_splits(content))
    # Relative entries are relative to the datalist's own folder, wherever the caller stands: MONAI joins them onto
    # ``base_dir``, which must therefore be absolute (its default, the datalist's folder as given, is relative when
    # the datalist path is, and the join below would then double it).
    base = datalist.resolve().parent
    work = []
    for split in splits:
        if not content.get(split):
            continue
        raw_entries = content[split]
        for index, entry in enumerate(load_decathlon_datalist(datalist, data_list_key=split, base_dir=base)):
            missing = [key for key in require_keys or () if key not in entry]
            if missing and skip_incomplete:
                continue
            # From the JSON as written: MONAI turns a subject id that names an existing folder into a path.
            subject = raw_entries[index].get("subject") if isinstance(raw_entries[index], Mapping) else None
            case = CaseReport(split, index, None if subject is None else str(subject), [])
            if missing:
                case.findings.append(Finding(str(datalist), "entry", "error",
                                             f"{datalist}: {split} entry {index} lacks {missing}; every entry needs "
                                             f"{list(require_keys)}"))
            file_keys = [key for key in _file_keys(entry, keys) if key in entry]
            files = {key: str(entry[key]) if os.path.isabs(str(entry[key])) else str(base / str(entry[key]))
                     for key in file_keys}
            case.files = list(files.values())
            work.append((case, files))
    for case, files in tqdm(work, desc="checking data", unit="case", disable=not progress):
        findings, _ = check_case(files, label_key=label_key, label_values=label_values, spatial_dims=spatial_dims,
                                 max_bytes=max_bytes)
        case.findings.extend(findings)
        report.cases.append(case)
    report.dataset_findings.extend(check_duplicate_files(work, skip_keys=[label_key] if label_key else []))
    if not report.cases:
        needing = f" with {list(require_keys)}" if require_keys else ""
        report.dataset_findings.append(Finding(str(datalist), "entry", "error",
                                               f"{datalist}: no cases{needing} in {' or '.join(splits)}"))
    return report


def write_check_report(manifest: str | os.PathLike, report_path: str | os.PathLike | None = "data_check.json",
                       **options) -> int:
    """``mri-ssl check-data``: run ``check_data`` (``options`` as it takes them), print the table, write the JSON
    report atomically; return the exit status (1 when any error was found, else 0)."""
    if not Path(manifest).is_file():
        raise InputError(manifest, "manifest not found")
    report = check_data(manifest, **options)
    print(report.table())
    if report_path:
        atomic_write_text(report_path, json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {report_path}")
    return 1 if report.errors else 0
