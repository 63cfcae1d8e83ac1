"""Find the datalist a bundle trains on: the user's, or the embedded demo data written on first use."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mri_ssl.errors import InputError

DATALIST_NAME = "datalist.json"


def resolve_datalist(
    dataset_dir: str | os.PathLike | None,
    demo_data_dir: str | os.PathLike,
    resolution_mm: float = 1.0,
    subjects: int = 4,
    validation_subjects: int = 1,
    seed: int = 0,
) -> str:
    """Path of the datalist JSON to train on.

    Args:
        dataset_dir: a datalist JSON file, or a folder holding ``datalist.json`` (as ``mri-ssl manifest`` writes).
            None (or "") means: use the embedded MNI152 phantom subjects.
        demo_data_dir: where the embedded subjects are written; reused when its ``datalist.json`` was written with
            the same resolution, subject count and seed, rewritten otherwise.
        resolution_mm, subjects, validation_subjects, seed: passed to ``write_demo_data`` on first use.
    """
    if dataset_dir not in (None, ""):
        path = Path(dataset_dir)
        if path.is_dir():
            path = path / DATALIST_NAME
        if not path.is_file():
            raise InputError(path, "datalist not found; give a datalist JSON or a folder holding datalist.json, "
                                   "or leave dataset_dir empty to use the embedded demo data")
        return str(path)
    demo_datalist = Path(demo_data_dir) / DATALIST_NAME
    if not _demo_matches(demo_datalist, resolution_mm, subjects, validation_subjects, seed):
        from mri_ssl.data.demo_data import write_demo_data

        write_demo_data(demo_data_dir, subjects=subjects, validation_subjects=validation_subjects,
                        resolution_mm=resolution_mm, seed=seed)
    return str(demo_datalist)


def _demo_matches(datalist: Path, resolution_mm: float, subjects: int, validation_subjects: int, seed: int) -> bool:
    if not datalist.is_file():
        return False
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError):
        return False
    return (content.get("resolution_mm") == float(resolution_mm) and content.get("seed") == int(seed)
            and len(content.get("training", [])) + len(content.get("validation", [])) == int(subjects)
            and len(content.get("validation", [])) == int(validation_subjects))


def check_datalist(datalist: str | os.PathLike, keys, maps: bool = True,
                   splits: tuple[str, ...] = ("training", "validation")) -> int:
    """Read every file a datalist names for ``keys`` before training starts; return the number of cases checked.

    Each file is read completely (a truncated gzip stream fails here, naming the file, instead of minutes into
    training). With ``maps=True`` the files of one case are checked together as qMRI maps (``load_maps``: shapes,
    affines, finite values, physical ranges). Raises ``InputError`` naming the file and the problem.
    """
    from monai.data import load_decathlon_datalist

    from mri_ssl.data.nifti import load_maps, load_nifti

    datalist = Path(datalist)
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise InputError(datalist, f"cannot read the datalist JSON ({error})") from error
    checked = 0
    for split in splits:
        if not content.get(split):
            continue
        for index, entry in enumerate(load_decathlon_datalist(datalist, data_list_key=split)):
            missing = [key for key in keys if key not in entry]
            if missing:
                raise InputError(datalist, f"{split} entry {index} lacks {missing}; every entry needs {list(keys)}")
            if maps:
                load_maps({key: entry[key] for key in keys})
            else:
                for key in keys:
                    load_nifti(entry[key])
            checked += 1
    if checked == 0:
        raise InputError(datalist, f"no cases in {' or '.join(splits)}")
    return checked
