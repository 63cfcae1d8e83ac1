"""What every manifest scanner shares: the split names, the keys that hold paths, and the split helpers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from mri_ssl.data.brain.maps import MAP_FILE_PATTERNS
from mri_ssl.errors import InputError

SPLITS = ("training", "validation", "test")
# Entry keys that hold file paths (made relative or kept absolute by write_manifest); the rest are plain values.
PATH_KEYS = ("image", "label", "mask", *MAP_FILE_PATTERNS)


def dataset_folder(directory: str | os.PathLike) -> Path:
    """``directory`` as an absolute path (symlinks kept, so annexed files keep their names); must exist."""
    folder = Path(os.path.abspath(directory))
    if not folder.is_dir():
        raise InputError(folder, "dataset folder not found")
    return folder


def assign_splits(entries: list[dict], split_of_subject: Mapping[str, str]) -> dict[str, list[dict]]:
    """Group entries by their subject's split; every split of ``SPLITS`` is present (possibly empty)."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for entry in entries:
        splits[split_of_subject[entry["subject"]]].append(entry)
    return splits


def subjects_to_splits(splits: Mapping[str, list[str]]) -> dict[str, str]:
    """``{split: [subjects]}`` turned round: the split of each subject."""
    return {subject: split for split, subjects in splits.items() for subject in subjects}
