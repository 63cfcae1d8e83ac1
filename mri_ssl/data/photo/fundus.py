"""2-D photographs (fundus, chest X-ray): reading, datalist checks and the transforms that load them (images, masks
and the ``.npy`` heatmap crops of heatmap generation).

Images are read with Pillow as RGB, channel first, float32 in 0..255: ``(3, H, W)``, row 0 at the top, so "top-left"
means what it means on screen. Lesion masks are read as ``(1, H, W)`` uint8 in {0, 1}; an entry's ``mask`` may be a
list of files (IDRiD keeps one file per lesion type), which are joined by union.

A fundus datalist is a decathlon-style JSON whose entries hold ``image`` (path), ``abnormal`` (0 normal, 1
abnormal: the coarse label), ``subject`` and optionally ``mask`` (lesion mask path or paths) and the IDRiD grades
``dr_grade`` (0-4) and ``dme_grade`` (0-2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from mri_ssl.data.integrity import check_no_split_leak
from mri_ssl.errors import InputError
from mri_ssl.grades import DME_GRADES, DR_GRADES
from mri_ssl.io.images import decode_raster, read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ABNORMAL_KEY = "abnormal"
# Joint grading (IDRiD): diabetic retinopathy grade 0-4 and diabetic macular oedema risk 0-2.
DR_GRADE_KEY, DME_GRADE_KEY = "dr_grade", "dme_grade"


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """``(3, H, W)`` float32 in 0..255; grey images are repeated to three channels.

    Decoded in full by ``mri_ssl.io.images.decode_raster`` (the reader the data checks use), so a missing, unreadable
    or truncated file raises a ``DataIntegrityError`` (an ``InputError``) naming the file, before training uses it.
    """
    rgb = decode_raster(path, "RGB").astype(np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def read_mask(paths: str | os.PathLike | Sequence[str | os.PathLike], background_value: int = 0) -> np.ndarray:
    """``(1, H, W)`` uint8 in {0, 1}: pixels other than ``background_value`` in the mask file(s), joined by union.

    ``background_value`` is 0 for most datasets and 255 for REFUGE's disc / cup masks (white background). Each file is
    decoded as grey levels by ``decode_raster``; a bad file raises an ``InputError`` naming it.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise InputError("mask", "an empty list of mask files")
    union = None
    for path in map(Path, paths):
        mask = decode_raster(path, "L") != int(background_value)
        if union is not None and union.shape != mask.shape:
            raise InputError(path, f"mask shape {mask.shape} differs from that of {paths[0]} {union.shape}")
        union = mask if union is None else union | mask
    return union[None].astype(np.uint8)


class LoadPhotograph(Transform):
    """Read an image file as ``(3, H, W)`` float32 in 0..255 (``read_rgb``)."""

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        return torch.from_numpy(read_rgb(path))


class LoadPhotographd(MapTransform):
    """Dictionary wrapper: ``keys`` read with ``read_rgb`` (the path kept under ``<key>_path``), ``mask_keys`` with
    ``read_mask`` (uint8 {0, 1}).

    A mask must have its image's height and width; otherwise ``InputError`` names the mask file.
    """
    def __init__(self, keys: KeysCollection, mask_keys: KeysCollection = (), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = (mask_keys,) if isinstance(mask_keys, str) else tuple(mask_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            result[f"{key}_path"] = str(result[key])  # kept for reports and output names
            result[key] = torch.from_numpy(read_rgb(result[key]))
        shape = next((result[key].shape[1:] for key in self.keys if key in result), None)
        # Read here and dropped, so batches of entries with and without it still collate.
        background_value = int(result.pop("mask_background_value", 0))
        for key in self.mask_keys:
            if key not in result or result[key] in (None, ""):
                continue
            mask = read_mask(result[key], background_value)
            if shape is not None and mask.shape[1:] != tuple(shape):
                raise InputError(result[key], f"mask size {mask.shape[1:]} differs from its image's {tuple(shape)}")
            result[key] = torch.from_numpy(mask)
        return result


def read_heatmap(path: str | os.PathLike) -> np.ndarray:
    """(1, h, w) float32 heatmap from a ``.npy`` file; ``InputError`` naming the file if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "heatmap file not found; run generate_heatmaps.json first")
    try:
        heatmap = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot read the heatmap ({error})") from error
    if heatmap.ndim != 2 or not np.isfinite(heatmap).all():
        raise InputError(path, f"expected a finite 2-D heatmap, got shape {heatmap.shape}")
    return heatmap[None].astype(np.float32)


class LoadHeatmapd(MapTransform):
    """Dictionary loader: ``keys`` hold heatmap ``.npy`` paths, read as (1, h, w) float32 (``read_heatmap``)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            result[key] = torch.from_numpy(read_heatmap(result[key]))
        return result


def fundus_entries(datalist: str | os.PathLike, split: str, require_mask: bool = False,
                   label_from: str | None = None, keys: Sequence[str] | None = None, grades: bool = False
                   ) -> list[dict]:
    """Entries of ``split`` with paths resolved (``load_decathlon_datalist``) and ``abnormal`` checked to be 0 or 1.

    ``require_mask=True`` keeps only entries that have a ``mask`` (segmentation trains on the annotated images).
    ``label_from`` copies that key (``abnormal`` for classification, ``mask`` for segmentation) to ``label``, the key
    MONAI's supervised engines read. ``grades=True`` (joint DR / DME grading) keeps only the entries with both
    ``dr_grade`` (0-4) and ``dme_grade`` (0-2), as IDRiD manifests give them to the grading images, and sets
    ``label`` to the int64 array ``[dr_grade, dme_grade]``; a datalist without any graded entry (the embedded demo
    set) is an ``InputError``. ``keys`` keeps only those keys (those present), so that entries with and without
    optional keys (a mask on some images only) collate into one batch. An absent or empty split gives an empty
    list.
    """
    import json

    from monai.data import load_decathlon_datalist

    datalist = Path(datalist)
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise InputError(datalist, f"cannot read the datalist JSON ({error})") from error
    if not content.get(split):
        return []
    # load_decathlon_datalist resolves the string value of every key it sees as a path; lists of mask paths are
    # resolved here.
    entries = load_decathlon_datalist(datalist, data_list_key=split)
    base = datalist.parent
    for index, entry in enumerate(entries):
        if "image" not in entry:
            raise InputError(datalist, f"{split} entry {index} has no 'image'")
        if ABNORMAL_KEY in entry and entry[ABNORMAL_KEY] not in (0, 1):
            raise InputError(datalist, f"{split} entry {index} ({entry['image']}) has abnormal = "
                                       f"{entry[ABNORMAL_KEY]!r}; expected 0 (normal) or 1 (abnormal)")
        if isinstance(entry.get("mask"), list):
            entry["mask"] = [str(base / path) if not os.path.isabs(path) else path for path in entry["mask"]]
    if require_mask:
        entries = [entry for entry in entries if entry.get("mask")]
    if grades:
        entries = _graded(entries, datalist, split)
    if label_from:
        for index, entry in enumerate(entries):
            if label_from not in entry:
                raise InputError(datalist, f"{split} entry {index} ({entry['image']}) has no {label_from!r}")
            entry["label"] = entry[label_from]
    if keys is not None:
        entries = [{key: entry[key] for key in keys if key in entry} for entry in entries]
    return entries


def _graded(entries: list[dict], datalist: Path, split: str) -> list[dict]:
    """The entries holding both grades, each checked and given ``label = [dr_grade, dme_grade]``."""
    graded = [entry for entry in entries if DR_GRADE_KEY in entry or DME_GRADE_KEY in entry]
    if entries and not graded:
        raise InputError(datalist, f"no {split} entry has the grades {DR_GRADE_KEY!r} and {DME_GRADE_KEY!r} that "
                                   f"joint DR / DME grading needs (an IDRiD manifest from `mri-ssl manifest idrid` "
                                   f"has them; the embedded demo set and coarse-label datasets have none)")
    for entry in graded:
        for key, count in ((DR_GRADE_KEY, DR_GRADES), (DME_GRADE_KEY, DME_GRADES)):
            if entry.get(key) not in range(count) or isinstance(entry.get(key), bool):
                raise InputError(datalist, f"{split} entry {entry['image']} has {key} = {entry.get(key)!r}; "
                                           f"expected an integer from 0 to {count - 1}")
        entry["label"] = np.array([entry[DR_GRADE_KEY], entry[DME_GRADE_KEY]], dtype=np.int64)
    return graded


def check_fundus_datalist(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation"),
                          require_label: bool = True, require_mask: bool = False, progress: bool = False) -> int:
    """Read every image (and mask) ``splits`` name before any training starts; return the number of entries.

    Raises ``InputError`` naming the file and the problem: a missing or unreadable image (or heatmap crop), an
    entry without the coarse label ``abnormal`` (when ``require_label``), a mask of another size than its image;
    each image and mask is first read completely by ``mri_ssl.io.images`` (every PNG chunk CRC checked, a
    truncated file never padded), which raises its ``DataIntegrityError`` naming the file and the check. A subject in
    two splits is an error too.
    """
    from tqdm.auto import tqdm

    check_no_split_leak(datalist)

    entries = [(split, entry) for split in splits for entry in fundus_entries(datalist, split, require_mask)]
    if not entries:
        raise InputError(datalist, f"no entries in {' or '.join(splits)}" + (" with a mask" if require_mask else ""))
    loader = LoadPhotographd("image", mask_keys="mask")
    for split, entry in tqdm(entries, desc="checking images", unit="image", disable=not progress):
        if require_label and ABNORMAL_KEY not in entry:
            raise InputError(entry["image"], f"the {split} entry has no coarse label {ABNORMAL_KEY!r} (0 or 1)")
        masks = entry.get("mask") or []
        for path in [entry["image"]] + (masks if isinstance(masks, list) else [masks]):
            read_image(path, spatial_dims=2)
        loader({key: entry[key] for key in ("image", "mask", "mask_background_value") if key in entry})
        if "heatmap" in entry:
            read_heatmap(entry["heatmap"])
    return len(entries)


# What a pretraining run's best checkpoint is chosen on (``probe_selection`` of the fundus bundle's pretrain.json):
# the lesion-patch probe, the whole-image normal / abnormal probe, or ``auto``: the lesion-patch probe when the
# training and validation splits have lesion masks, else the whole-image one.
PROBE_SELECTIONS = ("auto", "lesion_patches", "whole_image")


def has_lesion_masks(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation")) -> bool:
    """True when every one of ``splits`` has at least one entry with a ``mask`` (what the lesion-patch probe needs)."""
    return all(any(entry.get("mask") for entry in fundus_entries(datalist, split)) for split in splits)


def probe_selection_name(selection: str, lesion_masks: bool) -> str:
    """The ``ProbeSet`` name ``selection`` (one of ``PROBE_SELECTIONS``) picks: ``"lesion"`` (the lesion-patch probe)
    or ``""`` (the whole-image probe); ``lesion_masks``: whether the lesion-patch probe runs (``has_lesion_masks``)."""
    if selection not in PROBE_SELECTIONS:
        raise InputError("probe_selection", f"must be one of {list(PROBE_SELECTIONS)}, got {selection!r}")
    if selection == "lesion_patches" and not lesion_masks:
        raise InputError("probe_selection", "'lesion_patches' needs lesion masks in the training and validation "
                                            "splits; this datalist has none there: use 'whole_image' or 'auto'")
    return "lesion" if selection == "lesion_patches" or (selection == "auto" and lesion_masks) else ""
