"""Embedded demo CMR studies for video-text pretraining: phantom cine + LGE series with a report and disease label.

Each study is one subject of the 2-D cardiac phantom (``mri_ssl.physics.cardiac``) with a disease drawn from
``DISEASE_LABELS`` and pathology parameters in that disease's range:

    ==============  =====================  ===================  ==========  =====================  ============
    label           LV ED radius (mm)      wall (mm)            EF          scar                   RV scale
    ==============  =====================  ===================  ==========  =====================  ============
    normal          21-27                  7.5-10.5             0.55-0.70   none                   0.9-1.1
    dilated         31-38                  5-8                  0.15-0.42   none                   0.9-1.4
    hypertrophic    17-23                  13-20                0.60-0.80   none                   0.9-1.1
    scar            21-28                  7.5-10.5             0.30-0.55   40-130 deg, 30-100 %   0.9-1.1
    ==============  =====================  ===================  ==========  =====================  ============

("scar" is the ischaemic-like case: a subendocardial-to-transmural sector of late enhancement.) The report
impression is written from the *parameters*, not from the label, with wording drawn at random from several
phrasings per finding (``write_impression``), so retrieval has to read the images: the stated EF, wall thickness,
scar territory and extent all come from the phantom's numbers.

Series per study (``SERIES_LAYOUT``): cine short axis (mid-ventricle) and cine long axis (four-chamber), each
``cine_frames`` frames over one R-R interval; LGE short axis, ``lge_slices`` slices from base to apex as frames;
LGE long axis, one image. Each series is one NIfTI file (H, W, frames) float32.

Reproducible and disjoint: study ``i`` is drawn from its own generator, seeded ``(seed, i)`` (recorded in its
manifest entry as ``seed``), and the split is drawn from ``(seed, SPLIT_STREAM)``; so the same arguments give the
same studies and reports, each split's studies share no seed with another split's, and a larger ``studies`` keeps
the first studies unchanged. 500 studies (300 / 100 / 100) at 48x48 take about 0.2 s each on one CPU thread
(``benchmarks/cmr_studies_generation.py``) and about 160 MB on disk; they are written once and reused.

On disk (``write_cmr_studies``)::

    DIR/manifest.json        {"kind": "cmr_video_text", "studies": [...], "training": [ids], "validation": ..., ...}
    DIR/<study>/<series>.nii.gz

One manifest entry per study: ``study_id``, ``series`` (``type`` cine|lge, ``view`` sax|lax, ``file`` relative to
DIR, ``num_frames``), ``report`` (the impression), ``label`` (one of ``DISEASE_LABELS``), ``parameters`` (the
HeartAnatomy pathology numbers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mri_ssl.data.datalist import DemoWriter
from mri_ssl.data.splits import split_counts
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json
from mri_ssl.physics.cardiac import DEFAULT_MATRIX, HeartAnatomy, render_cine, render_series, sample_anatomy

CMR_MANIFEST_KIND = "cmr_video_text"
MANIFEST_NAME = "manifest.json"
DISEASE_LABELS = ("normal", "dilated", "hypertrophic", "scar")
SERIES_LAYOUT = (("cine", "sax"), ("cine", "lax"), ("lge", "sax"), ("lge", "lax"))
SPLIT_FRACTIONS = {"training": 0.6, "validation": 0.2, "test": 0.2}
SPLIT_STREAM = 2 ** 20  # the split's generator key; study keys (their indices) stay below it
_VIEW_NAMES = {"sax": "short_axis", "lax": "long_axis"}

# Mid-ventricular wall territories (AHA segments 7-12) by angle in the phantom's short-axis heart frame: measured
# anticlockwise on screen from the lateral wall; the RV (hence the septum) sits at 180 degrees, anterior at 90.
_TERRITORIES = ((0, "anterolateral"), (60, "anterior"), (120, "anteroseptal"), (180, "inferoseptal"),
                (240, "inferior"), (300, "inferolateral"))


def anatomy_for_label(label: str, rng: np.random.Generator) -> HeartAnatomy:
    """A random phantom subject with pathology in the range of ``label`` (table in the module docstring)."""
    if label not in DISEASE_LABELS:
        raise InputError("label", f"expected one of {DISEASE_LABELS}, got {label!r}")
    base = sample_anatomy(rng, disease_probability=0.0)  # body habitus, heart position and orientation
    radius, wall, ef = rng.uniform(21.0, 27.0), rng.uniform(7.5, 10.5), rng.uniform(0.55, 0.70)
    rv = rng.uniform(0.9, 1.1)
    scar = (0.0, 0.0, 0.0)
    if label == "dilated":
        radius, wall, ef, rv = rng.uniform(31.0, 38.0), rng.uniform(5.0, 8.0), rng.uniform(0.15, 0.42), \
            rng.uniform(0.9, 1.4)
    elif label == "hypertrophic":
        radius, wall, ef = rng.uniform(17.0, 23.0), rng.uniform(13.0, 20.0), rng.uniform(0.60, 0.80)
    elif label == "scar":
        radius, ef = rng.uniform(21.0, 28.0), rng.uniform(0.30, 0.55)
        scar = (rng.uniform(0.0, 360.0), rng.uniform(40.0, 130.0), rng.uniform(0.3, 1.0))
    return base.replace(lv_radius_mm=float(radius), wall_thickness_mm=float(wall), ejection_fraction=float(ef),
                        rv_scale=float(rv), scar_center_deg=float(scar[0]), scar_extent_deg=float(scar[1]),
                        scar_transmurality=float(scar[2]))


def scar_territory(center_deg: float) -> str:
    """The mid-ventricular wall territory of a scar centred at ``center_deg`` (heart frame, see _TERRITORIES)."""
    angle = float(center_deg) % 360.0
    return [name for start, name in _TERRITORIES if angle >= start][-1]


def function_grade(ejection_fraction: float) -> str:
    """LV systolic function category from EF (fraction): normal >= 0.55, mildly 0.45-0.55, moderately 0.30-0.45,
    severely reduced < 0.30 (the usual CMR report bands)."""
    if ejection_fraction >= 0.55:
        return "normal"
    if ejection_fraction >= 0.45:
        return "mildly reduced"
    return "moderately reduced" if ejection_fraction >= 0.30 else "severely reduced"


def write_impression(anatomy: HeartAnatomy, rng: np.random.Generator) -> str:
    """A report impression stating the anatomy's findings, each in one of several wordings drawn from ``rng``.

    Findings, all from the parameters: LV size (dilated when the ED cavity radius >= 30 mm), wall thickness
    (hypertrophy >= 12.5 mm, thinned <= 8 mm, stated in mm), systolic function grade and EF in percent, late
    enhancement (territory, extent focal/patchy/extensive by angle, subendocardial/partial/transmural by depth), RV
    size (dilated when rv_scale >= 1.25).
    """
    def pick(options):
        return options[int(rng.integers(len(options)))]

    ef = int(round(100 * anatomy.ejection_fraction))
    grade = function_grade(anatomy.ejection_fraction)
    wall = anatomy.wall_thickness_mm
    sentences = []
    dilated = anatomy.lv_radius_mm >= 30.0
    if dilated:
        sentences.append(pick([
            f"The left ventricle is dilated with {grade} systolic function, EF {ef}%.",
            f"Dilated left ventricle; {grade} LV systolic function (EF {ef}%).",
            f"LV cavity is enlarged. Systolic function is {grade}, ejection fraction {ef}%.",
        ]))
    else:
        sentences.append(pick([
            f"Normal left ventricular size with {grade} systolic function, EF {ef}%.",
            f"The left ventricle is normal in size; {grade} systolic function (EF {ef}%).",
            f"LV size is within normal limits. Ejection fraction {ef}%, {grade} function.",
        ]))
    if wall >= 12.5:
        sentences.append(pick([
            f"There is concentric left ventricular hypertrophy, maximal wall thickness {wall:.0f} mm.",
            f"Concentric LV hypertrophy with wall thickness of {wall:.0f} mm.",
            f"The myocardium is thickened ({wall:.0f} mm), consistent with hypertrophy.",
        ]))
    elif wall <= 8.0:
        sentences.append(pick([f"The LV walls are thinned ({wall:.0f} mm).",
                               f"Thin left ventricular myocardium, {wall:.0f} mm."]))
    else:
        sentences.append(pick(["Normal wall thickness.", "No left ventricular hypertrophy.",
                               f"Wall thickness is normal at {wall:.0f} mm."]))
    if anatomy.has_scar:
        extent = anatomy.scar_extent_deg
        size = "focal" if extent < 60 else ("patchy" if extent < 100 else "extensive")
        depth = anatomy.scar_transmurality
        layer = "subendocardial" if depth < 0.5 else ("partial-thickness" if depth < 0.75 else "transmural")
        territory = scar_territory(anatomy.scar_center_deg)
        sentences.append(pick([
            f"{size.capitalize()} {layer} late enhancement of the mid {territory} wall, in keeping with infarction.",
            f"There is {size} {layer} late gadolinium enhancement in the mid {territory} segment.",
            f"LGE shows {layer} scar of the mid {territory} wall ({size}), ischaemic pattern.",
        ]))
    else:
        sentences.append(pick(["No late gadolinium enhancement.", "There is no myocardial scar on LGE imaging.",
                               "Late enhancement imaging is unremarkable."]))
    if anatomy.rv_scale >= 1.25:
        sentences.append(pick(["The right ventricle is dilated.", "RV dilatation.", "Enlarged right ventricle."]))
    else:
        sentences.append(pick(["Normal right ventricular size.", "The right ventricle is normal in size.",
                               "RV size is normal."]))
    return " ".join(sentences)


def render_cmr_series(anatomy: HeartAnatomy, rng: np.random.Generator, cine_frames: int = 16, lge_slices: int = 4,
                      matrix: int = DEFAULT_MATRIX) -> dict[tuple[str, str], np.ndarray]:
    """Every series of ``SERIES_LAYOUT`` as float32 (frames, H, W): cine frames over time, LGE slices over depth."""
    if int(cine_frames) < 1 or int(lge_slices) < 1:
        raise InputError("cine_frames", f"need at least one cine frame and one LGE slice, got {cine_frames} and "
                                        f"{lge_slices}")
    series = {}
    for kind, view in SERIES_LAYOUT:
        if kind == "cine":
            series[(kind, view)] = render_cine(anatomy, int(cine_frames), _VIEW_NAMES[view], rng=rng, matrix=matrix)
        else:
            images = render_series(anatomy, "LGE", rng, slices=int(lge_slices) if view == "sax" else 1,
                                   view=_VIEW_NAMES[view], matrix=matrix)
            series[(kind, view)] = np.stack([image.image for image in images]).astype(np.float32)
    return series


def write_cmr_studies(folder: str | os.PathLike, studies: int = 40, seed: int = 0, cine_frames: int = 16,
                      lge_slices: int = 4, matrix: int = DEFAULT_MATRIX, progress: bool = True) -> Path:
    """Write ``studies`` phantom studies (labels balanced in turn) into ``folder``; return the manifest path.

    Args:
        folder: output folder (created). studies: how many (>= 4, so every split has a study).
        seed: seed of anatomy, wording, noise and the 60/20/20 study-level split.
        cine_frames: frames per cine series. lge_slices: short-axis LGE slices. matrix: pixels per side.
        progress: show a progress bar.
    """
    if int(studies) < 4:
        raise InputError("studies", f"need at least 4 studies (one per disease label), got {studies}")
    if int(studies) >= SPLIT_STREAM:
        raise InputError("studies", f"at most {SPLIT_STREAM - 1} studies (study seeds stay apart from the split's)")
    if int(matrix) < 16:
        raise InputError("matrix", f"expected at least 16 pixels per side, got {matrix}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the phantom's small tensors: 2.6x faster on one thread than on two busy cores
    try:
        entries = [_write_study(folder, index, seed, cine_frames, lge_slices, matrix)
                   for index in tqdm(range(int(studies)), desc="CMR phantom studies", unit="study",
                                     disable=not progress)]
    finally:
        torch.set_num_threads(threads)
    # Stratified: shuffle each label's studies, interleave the labels, then cut into the split sizes, so every
    # split of at least 4 studies sees every disease.
    rng = np.random.default_rng([int(seed), SPLIT_STREAM])
    by_label = [list(rng.permutation([e["study_id"] for e in entries if e["label"] == label]))
                for label in DISEASE_LABELS]
    order = [str(ids[i]) for i in range(max(map(len, by_label))) for ids in by_label if i < len(ids)]
    split_of, start = {}, 0
    for split, count in split_counts(len(order), SPLIT_FRACTIONS).items():
        split_of.update({study_id: split for study_id in order[start:start + count]})
        start += count
    manifest = {"kind": CMR_MANIFEST_KIND, "description": "2-D cardiac phantom CMR studies with report impressions",
                "seed": int(seed), "labels": list(DISEASE_LABELS), "cine_frames": int(cine_frames),
                "lge_slices": int(lge_slices), "matrix": int(matrix), "studies": entries}
    for split in SPLIT_FRACTIONS:
        manifest[split] = [e["study_id"] for e in entries if split_of[e["study_id"]] == split]
    return save_json(manifest, folder / MANIFEST_NAME)


def _write_study(folder: Path, index: int, seed: int, cine_frames: int, lge_slices: int, matrix: int) -> dict:
    """Render study ``index`` from its own generator ``(seed, index)``, write its series; return its manifest entry."""
    import nibabel as nib

    rng = np.random.default_rng([int(seed), int(index)])
    label = DISEASE_LABELS[index % len(DISEASE_LABELS)]
    anatomy = anatomy_for_label(label, rng)
    study_id = f"study{index:04d}"
    (folder / study_id).mkdir(exist_ok=True)
    pixel_mm = 300.0 / int(matrix)
    series_entries = []
    for (kind, view), frames in render_cmr_series(anatomy, rng, cine_frames, lge_slices, matrix).items():
        name = f"{study_id}/{kind}_{view}.nii.gz"
        # Plain writes (many small files); the manifest, written atomically last, marks the folder complete.
        nib.save(nib.Nifti1Image(np.moveaxis(frames, 0, -1), np.diag([pixel_mm, pixel_mm, 1.0, 1.0])),
                 str(folder / name))
        series_entries.append({"type": kind, "view": view, "file": name, "num_frames": int(frames.shape[0])})
    return {
        "study_id": study_id, "seed": [int(seed), int(index)], "series": series_entries,
        "report": write_impression(anatomy, rng), "label": label,
        "parameters": {key: round(float(getattr(anatomy, key)), 3) for key in (
            "lv_radius_mm", "wall_thickness_mm", "ejection_fraction", "rv_scale", "scar_center_deg",
            "scar_extent_deg", "scar_transmurality")},
    }


def load_cmr_manifest(path: str | os.PathLike) -> dict:
    """Read and check a CMR manifest (a ``manifest.json`` or its folder): every study has a report and series with
    existing files. Returns the manifest with ``"root"`` set to its folder (series files are relative to it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(str(path), "no CMR manifest here; write one with write_cmr_studies or `mri-ssl manifest cmr`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(str(path), f"not valid JSON ({error})") from error
    studies = manifest.get("studies")
    if not isinstance(studies, list) or not studies:
        raise InputError(str(path), "expected a non-empty 'studies' list")
    for study in studies:
        study_id = study.get("study_id", "?")
        if not isinstance(study.get("report"), str) or not study["report"].strip():
            raise InputError(f"{path}:{study_id}", "study has no report text")
        if not study.get("series"):
            raise InputError(f"{path}:{study_id}", "study has no series")
        for series in study["series"]:
            if not (path.parent / series["file"]).is_file():
                raise InputError(str(path.parent / series["file"]), f"series file of {study_id} is missing")
    manifest["root"] = str(path.parent)
    return manifest


# The embedded default data of the cmr_video_text bundle (``resolve_datalist`` writes them on first use).
# Version 2: every manifest entry records its study seed.
CMR_DEMO = DemoWriter("cmr_studies", write_cmr_studies, version="2", file_name=MANIFEST_NAME)
