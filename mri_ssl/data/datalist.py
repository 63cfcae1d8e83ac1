"""Find the datalist a bundle trains on: the user's, or the embedded demo data written on first use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from mri_ssl.atomic import exclusive_lock
from mri_ssl.errors import InputError

DATALIST_NAME = "datalist.json"
DEMO_LOCK_NAME = ".writing.lock"  # taken while the embedded demo data are checked and (re)written


DEMO_KINDS = ("pretrain", "downstream")


def resolve_datalist(
    dataset_dir: str | os.PathLike | None,
    demo_data_dir: str | os.PathLike,
    resolution_mm: float = 1.0,
    subjects: int = 4,
    validation_subjects: int = 1,
    seed: int = 0,
    demo: str = "pretrain",
    test_subjects: int = 2,
) -> str:
    """Path of the datalist JSON to train on.

    Args:
        dataset_dir: a datalist JSON file (as ``mri-ssl manifest`` writes), or a folder holding ``datalist.json``.
            None (or "") means: use the embedded MNI152 phantom subjects.
        demo_data_dir: where the embedded subjects are written; reused when its ``datalist.json`` was written with
            the same kind, resolution, subject counts and seed, rewritten otherwise.
        resolution_mm, subjects, validation_subjects, seed: passed to the demo writer on first use.
        demo: ``pretrain`` writes qMRI maps (``write_demo_data``); ``downstream`` writes simulated images with tissue
            labels and a test split (``write_downstream_demo``, using ``test_subjects``).
    """
    if dataset_dir not in (None, ""):
        path = Path(dataset_dir)
        if path.is_dir():
            path = path / DATALIST_NAME
        if not path.is_file():
            raise InputError(path, "datalist not found; give a datalist JSON or a folder holding datalist.json, "
                                   "or leave dataset_dir empty to use the embedded demo data")
        return str(path)
    if demo not in DEMO_KINDS:
        raise InputError("demo", f"unknown demo data kind {demo!r}; expected one of {', '.join(DEMO_KINDS)}")
    demo_datalist = Path(demo_data_dir) / DATALIST_NAME
    test_subjects = int(test_subjects) if demo == "downstream" else 0
    # Runs of an experiment grid may share one demo folder and start together: one writes, the others wait.
    with exclusive_lock(Path(demo_data_dir) / DEMO_LOCK_NAME):
        if not _demo_matches(demo_datalist, demo, resolution_mm, subjects, validation_subjects, test_subjects,
                             seed):
            from mri_ssl.data.demo_data import write_demo_data, write_downstream_demo

            if demo == "pretrain":
                write_demo_data(demo_data_dir, subjects=subjects, validation_subjects=validation_subjects,
                                resolution_mm=resolution_mm, seed=seed)
            else:
                write_downstream_demo(demo_data_dir, subjects=subjects, test_subjects=test_subjects,
                                      validation_subjects=validation_subjects, resolution_mm=resolution_mm,
                                      seed=seed)
    return str(demo_datalist)


def _demo_matches(datalist: Path, demo: str, resolution_mm: float, subjects: int, validation_subjects: int,
                  test_subjects: int, seed: int) -> bool:
    if not datalist.is_file():
        return False
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError):
        return False
    kind = {"pretrain": "pretrain", "downstream": "demo"}[demo]

    def count(split: str) -> int:
        return len({entry.get("subject") for entry in content.get(split, [])})

    from mri_ssl.data.demo_data import DOWNSTREAM_LAYOUT, SUBJECT_SEEDING

    return (content.get("kind", "pretrain") == kind
            and (demo != "downstream" or content.get("layout") == DOWNSTREAM_LAYOUT)
            and content.get("resolution_mm") == float(resolution_mm)
            and content.get("subject_seeding") == SUBJECT_SEEDING
            and content.get("seed") == int(seed)
            and count("training") + count("validation") + count("test") == int(subjects)
            and count("validation") == int(validation_subjects) and count("test") == int(test_subjects))


def check_datalist(datalist: str | os.PathLike, keys, maps: bool = True,
                   splits: tuple[str, ...] = ("training", "validation"), progress: bool = False) -> int:
    """Read and check every file a datalist names for ``keys`` before training starts; return the case count.

    Runs ``integrity.check_data``: each file is read completely (a truncated gzip stream fails here, naming the
    file, instead of minutes into training) and checked (size, dimensions, finite voxels, geometry); the files of
    one case must agree in shape and affine; qMRI maps must be in their physical ranges; no subject may be in two
    splits. With ``maps=True`` the keys must also be a set of maps simulation can use (pd, r1, r2s at least).
    Raises ``DataIntegrityError`` (an ``InputError``) naming the file and the failed check.
    """
    from mri_ssl.data.integrity import check_data
    from mri_ssl.physics.simulate import check_map_names

    keys = list(keys)
    if maps:
        check_map_names(keys, source="map_keys")
    report = check_data(datalist, splits=splits, keys=keys, label_key=None, spatial_dims=3, require_keys=keys,
                        progress=progress)
    report.raise_on_error()
    return len(report.cases)


def check_labelled_datalist(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation"),
                            image_key: str = "image", label_key: str | None = "label",
                            label_values: Iterable[int] | None = None, progress: bool = False) -> int:
    """Read and check every image (and label) a datalist names in ``splits`` before training; return the case count.

    The cases are those ``labelled_entries`` gives (what the bundles train on). Each file is read completely and
    checked (``integrity.check_data``). A label must have its image's shape and affine (within
    ``AFFINE_TOLERANCE_MM``) and hold only ``label_values`` (default: the datalist's ``labels``, if any); no subject
    may be in two splits. ``label_key=None`` checks images only (denoising).
    Raises ``DataIntegrityError`` (an ``InputError``) naming the file and the check. A split that is absent or empty
    is skipped, but at least one case must be found.
    """
    from mri_ssl.data.integrity import check_data

    datalist = Path(datalist)
    keys = [image_key] + ([label_key] if label_key else [])
    for split in splits:
        labelled_entries(datalist, split, keys)  # an entry without an image is an error naming its index
    report = check_data(datalist, splits=splits, keys=keys, label_key=label_key, label_values=label_values,
                        spatial_dims=3, require_keys=keys, skip_incomplete=True, progress=progress)
    report.raise_on_error()
    return len(report.cases)


def labelled_entries(datalist: str | os.PathLike, split: str, keys: Sequence[str] = ("image", "label")) -> list[dict]:
    """The entries of ``split`` that have every key in ``keys``, paths resolved (``load_decathlon_datalist``).

    Manifests list images without a label too (``mri-ssl manifest ixi`` keeps them for denoising and counts them as
    ``unlabeled``); segmentation trains and is scored on the labelled ones. An entry with no ``image`` at all is an
    error naming its index. An absent or empty split gives an empty list.
    """
    from monai.data import load_decathlon_datalist

    datalist = Path(datalist)
    if not _read_datalist(datalist).get(split):
        return []
    entries = load_decathlon_datalist(datalist, data_list_key=split)
    for index, entry in enumerate(entries):
        if keys and keys[0] not in entry:
            raise InputError(datalist, f"{split} entry {index} has no {keys[0]!r}; every entry needs one")
    return [entry for entry in entries if all(key in entry for key in keys)]


def _read_datalist(datalist: Path) -> dict:
    try:
        return json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise InputError(datalist, f"cannot read the datalist JSON ({error})") from error


def inference_inputs(input_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None,
                     split: str = "test", image_key: str = "image", check: bool = True,
                     spatial_dims: int | None = 3) -> list[dict]:
    """The images an inference config runs on, as ``[{"image": path}, ...]``.

    Every NIfTI file in ``input_dir`` (sorted by name); with no ``input_dir`` (None or ""), the ``split`` images of
    ``datalist`` (each image once). Raises ``InputError`` when the folder is missing or holds no NIfTI files. With
    ``check`` every image is read and checked first (``integrity.check_image_files``), so a damaged file stops the
    run with its name before any inference.
    """
    items = _inference_inputs(input_dir, datalist, split, image_key)
    if check:
        from mri_ssl.data.integrity import check_image_files

        check_image_files([item[image_key] for item in items], spatial_dims=spatial_dims)
    return items


def _inference_inputs(input_dir, datalist, split: str, image_key: str) -> list[dict]:
    from monai.data import load_decathlon_datalist

    from mri_ssl.data.nifti import is_nifti

    if input_dir not in (None, ""):
        folder = Path(input_dir)
        if not folder.is_dir():
            raise InputError(folder, "input folder not found")
        files = sorted(str(path) for path in folder.iterdir() if is_nifti(path))
        if not files:
            raise InputError(folder, "no NIfTI files (.nii or .nii.gz) in the input folder")
        return [{image_key: path} for path in files]
    if datalist in (None, ""):
        raise InputError("input_dir", "give a folder of NIfTI images (input_dir) or a datalist")
    entries = load_decathlon_datalist(str(datalist), data_list_key=split)
    files = list(dict.fromkeys(entry[image_key] for entry in entries))
    if not files:
        raise InputError(datalist, f"no {split} images")
    return [{image_key: path} for path in files]
