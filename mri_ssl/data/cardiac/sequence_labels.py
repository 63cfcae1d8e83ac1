"""Sequence-class labels for classification datalists: which entries are labelled, with which class index.

A classification datalist (the cardiac phantom's, or one ``mri-ssl manifest dicom`` writes) holds per image an
``image`` path, a ``subject`` and a ``sequence`` name, and ``class_index`` when the class is known. A brain MR
manifest (``mri-ssl manifest ixi|arc``) has no ``class_index``; ``sequence_map`` (e.g. ``BRAIN_SEQUENCE_MAP``) turns
its ``sequence`` names into classes, which is how the external evaluation on brain T1/T2 images works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from mri_ssl.data.integrity import check_no_split_leak
from mri_ssl.errors import InputError
from mri_ssl.io.images import check_image_files
from mri_ssl.physics.cardiac import SEQUENCE_CLASSES

# Brain manifests name sequences T1w / T2w / PDw / FLAIR; only T1w and T2w have a cardiac counterpart class.
BRAIN_SEQUENCE_MAP = {"T1w": "T1", "T2w": "T2"}


def _read(datalist: str | os.PathLike) -> tuple[Path, dict]:
    path = Path(datalist)
    if not path.is_file():
        raise InputError(path, "datalist not found")
    try:
        return path, json.loads(path.read_text())
    except ValueError as error:
        raise InputError(path, f"not valid JSON ({error})") from None


def classification_entries(datalist: str | os.PathLike, split: str, class_names: Sequence[str] = SEQUENCE_CLASSES,
                           labelled_only: bool = True, sequence_map: Mapping[str, str] | None = None
                           ) -> list[dict]:
    """Entries of ``split`` with absolute image paths and ``label`` = the class index.

    Args:
        datalist: the datalist JSON; relative image paths are relative to its folder.
        split: ``training``, ``validation`` or ``test``.
        class_names: the classifier's classes, in output order.
        labelled_only: drop entries without a class (True for supervised training and evaluation; False for
            self-supervised pretraining, which uses every image, with ``label`` -1 where unknown).
        sequence_map: maps an entry's ``sequence`` to a class name when it has no ``class_index``.
    """
    path, content = _read(datalist)
    if split not in content:
        raise InputError(path, f"has no {split!r} split; it has {[k for k in content if isinstance(content[k], list)]}")
    names = list(class_names)
    entries = []
    for index, entry in enumerate(content[split]):
        if "image" not in entry:
            raise InputError(f"{path} {split}/{index}", "entry has no 'image'")
        label = entry.get("class_index")
        if label is None and sequence_map and entry.get("sequence") in sequence_map:
            label = names.index(sequence_map[entry["sequence"]])
        if label is not None and not 0 <= int(label) < len(names):
            raise InputError(f"{path} {split}/{index}", f"class_index {label} is outside 0..{len(names) - 1}")
        if label is None and labelled_only:
            continue
        image = Path(entry["image"])
        item = {key: value for key, value in entry.items() if isinstance(value, (str, int, float))}
        item["image"] = str(image if image.is_absolute() else path.parent / image)
        item["label"] = -1 if label is None else int(label)
        entries.append(item)
    return entries


def check_classification_datalist(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation"),
                                  class_names: Sequence[str] = SEQUENCE_CLASSES, labelled_only: bool = True,
                                  sequence_map: Mapping[str, str] | None = None) -> None:
    """Raise ``InputError`` before training if a split is empty or an image file is missing, and a
    ``DataIntegrityError`` (naming the file and the check) if an image does not read completely as a finite 2-D
    image (``mri_ssl.io.images``); a subject in two splits is an error too."""
    check_no_split_leak(datalist)

    for split in splits:
        entries = classification_entries(datalist, split, class_names, labelled_only, sequence_map)
        if not entries:
            raise InputError(datalist, f"no {'labelled ' if labelled_only else ''}images in the {split!r} split")
        missing = [e["image"] for e in entries if not Path(e["image"]).is_file()]
        if missing:
            raise InputError(missing[0], f"image file not found ({len(missing)} missing in {split!r})")
        check_image_files([e["image"] for e in entries], spatial_dims=2)


def one_hot_label(index, num_classes: int) -> torch.Tensor:
    """``index`` as a float one-hot vector ``(num_classes,)``, the target of the per-class BCE."""
    return torch.nn.functional.one_hot(torch.as_tensor(int(index)), int(num_classes)).float()
