"""The lesion-patch probe: do an encoder's frozen features tell a crop centred on a lesion from a lesion-free crop?

The whole-image probe (``ClassificationProbe`` on normal / abnormal images) pools the features of a whole fundus, in
which lesions cover a few per cent of the pixels; a method that learns *local* lesion features (CAMContrast) can
transfer well to lesion segmentation while that probe stays at chance. This probe asks the local question instead,
at the scale the method trains on (its crop size), with images whose lesion masks are known:

- **lesion crops** (label 1): one square crop per lesion (a connected component of the mask, 8-connected, of at
  least ``min_lesion_pixels`` pixels), centred on the lesion's centroid; a window that would leave the image is
  shifted inside it (the lesion stays in the crop).
- **lesion-free crops** (label 0): per image (normal and abnormal alike), up to ``lesion_free_per_image`` windows
  that overlap no lesion pixel. Their centres are drawn, in a seeded order, from the lesion centroids of the whole
  set (the positions where lesions occur, shifted inside the image the same way), so lesion and lesion-free crops
  sample the same places of the fundus and the probe cannot score by position (rim, dark corners) alone. Normal
  images without a mask count as lesion-free; abnormal images without a mask are left out (their lesions are
  unknown).

The crops are then a labelled set like any other: ``LesionPatchProbe`` is ``ClassificationProbe`` (the same
embedding, logistic regression and scores), fitted on the crops of the training images and scored on those of the
held-out validation images, never the test split. Crops of one image are not independent, so the AUC's resolution
(1 / (positives x negatives)) is finer than its real uncertainty; the seed spread of a demo says more.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from mri_ssl.errors import InputError
from mri_ssl.metrics.classification_probe import ClassificationProbe

LESION, LESION_FREE = 1, 0
CLASS_NAMES = ("lesion_free", "lesion")  # in label order


def lesion_centres(mask: np.ndarray, min_pixels: int = 4) -> list[tuple[int, int]]:
    """``(row, col)`` centroids (rounded) of the 8-connected components of the 2-D ``mask`` with >= ``min_pixels``
    pixels, in label order."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise InputError("mask", f"expected a 2-D lesion mask, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    centres = ndimage.center_of_mass(mask, labels, index=np.arange(1, count + 1))
    return [(int(round(r)), int(round(c))) for (r, c), size in zip(centres, sizes) if size >= int(min_pixels)]


def crop_corner(centre: tuple[int, int], crop_size: int, shape: Sequence[int]) -> tuple[int, int]:
    """Top-left corner of the ``crop_size`` square centred on ``centre``, shifted to lie inside an image of ``shape``
    ``(H, W)``."""
    return tuple(int(min(max(c - crop_size // 2, 0), s - crop_size)) for c, s in zip(centre, shape))


def lesion_patches(images: Sequence[torch.Tensor], masks: Sequence[np.ndarray | torch.Tensor | None],
                   crop_size: int, lesion_free_per_image: int = 2, seed: int = 0, min_lesion_pixels: int = 4,
                   labels: Sequence[int] | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The probe's crops (see the module docstring): ``(crops (N, C, s, s), labels (N,), image index (N,))``.

    Args:
        images: ``(C, H, W)`` images.
        masks: per image its lesion mask (``(H, W)`` or ``(1, H, W)``, nonzero = lesion), or None when unknown.
        crop_size: the crops' side in pixels (at most the images' smallest side).
        lesion_free_per_image: lesion-free crops wanted per image (fewer when fewer windows avoid its lesions).
        seed: fixes the order in which lesion-free centres are tried.
        min_lesion_pixels: smaller components (specks) get no crop of their own.
        labels: per image 0 (normal) or 1 (abnormal), used only for images without a mask: a normal image without
            one is lesion-free, an abnormal one is left out. None: every image without a mask is left out.
    """
    crop_size = int(crop_size)
    if crop_size < 1:
        raise InputError("crop_size", f"must be >= 1, got {crop_size}")
    if int(lesion_free_per_image) < 1:
        raise InputError("lesion_free_per_image", f"must be >= 1, got {lesion_free_per_image}")
    if len(images) != len(masks) or (labels is not None and len(labels) != len(images)):
        raise InputError("masks", f"need one mask (or None) and one label per image, got {len(images)} images, "
                                  f"{len(masks)} masks and {'no' if labels is None else len(labels)} labels")
    known: list[tuple[int, torch.Tensor, np.ndarray]] = []  # (image index, image, mask) of the usable images
    for index, (image, mask) in enumerate(zip(images, masks)):
        image = torch.as_tensor(image).float()
        if image.ndim != 3 or min(image.shape[1:]) < crop_size:
            raise InputError(f"probe image {index}", f"expected (C, H, W) with H, W >= crop_size {crop_size}, got "
                                                     f"{tuple(image.shape)}")
        if mask is None:
            if labels is None or int(labels[index]) != 0:
                continue  # an abnormal image (or one of unknown class) without a mask: its lesions are unknown
            mask = np.zeros(image.shape[1:], dtype=bool)
        mask = np.asarray(torch.as_tensor(mask).cpu()).astype(bool).reshape(image.shape[1:])
        known.append((index, image, mask))
    crops, crop_labels, sources = [], [], []
    pool = []  # every lesion centroid of the set: where the lesion-free crops are centred too
    for index, image, mask in known:
        for centre in lesion_centres(mask, min_lesion_pixels):
            top, left = crop_corner(centre, crop_size, mask.shape)
            crops.append(image[:, top:top + crop_size, left:left + crop_size])
            crop_labels.append(LESION)
            sources.append(index)
            pool.append(centre)
    rng = np.random.default_rng(int(seed))
    for index, image, mask in known:
        taken: set[tuple[int, int]] = set()
        for position in rng.permutation(len(pool)):
            top, left = crop_corner(pool[position], crop_size, mask.shape)
            if (top, left) in taken or mask[top:top + crop_size, left:left + crop_size].any():
                continue
            taken.add((top, left))
            crops.append(image[:, top:top + crop_size, left:left + crop_size])
            crop_labels.append(LESION_FREE)
            sources.append(index)
            if len(taken) == int(lesion_free_per_image):
                break
    if not crops:
        return torch.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return (torch.stack([crop.clone() for crop in crops]), np.array(crop_labels, dtype=np.int64),
            np.array(sources, dtype=np.int64))


class LesionPatchProbe(ClassificationProbe):
    """``ClassificationProbe`` on lesion / lesion-free crops (``lesion_patches``) instead of whole images.

    Args:
        fit_data, data: items with ``image_key`` ``(C, H, W)`` images, ``mask_key`` lesion masks (absent or None when
            unknown) and ``label_key`` (0 normal, 1 abnormal; only read for images without a mask): the training
            split (the probe is fitted on its crops) and the held-out validation split (scored on its crops).
        crop_size: the crops' side in pixels: the method's own crop scale.
        lesion_free_per_image, min_lesion_pixels: as ``lesion_patches``.
        max_fit_items: at most this many fit *images* (a seeded draw) are cropped.
        l2, seed, random_init_seed, interval, log_dir, history_path, batch_size: as ``ClassificationProbe``
            (``seed`` also fixes the lesion-free crops).
    """

    def __init__(self, fit_data: Sequence[Mapping], data: Sequence[Mapping], crop_size: int,
                 lesion_free_per_image: int = 2, min_lesion_pixels: int = 4, image_key: str = "image",
                 mask_key: str = "mask", label_key: str = "label", max_fit_items: int | None = 2000,
                 l2: float = 1e-2, seed: int = 0, random_init_seed: int = 999, interval: int = 1,
                 log_dir: str | os.PathLike | None = None, history_path: str | os.PathLike | None = None,
                 batch_size: int = 64):
        super().__init__(fit_data, data, CLASS_NAMES, image_key, label_key, max_fit_items, l2, seed,
                         random_init_seed, interval, log_dir, history_path, batch_size)
        if int(crop_size) < 1:
            raise InputError("crop_size", f"must be >= 1, got {crop_size}")
        if int(lesion_free_per_image) < 1:
            raise InputError("lesion_free_per_image", f"must be >= 1, got {lesion_free_per_image}")
        self.crop_size, self.lesion_free_per_image = int(crop_size), int(lesion_free_per_image)
        self.min_lesion_pixels, self.mask_key = int(min_lesion_pixels), mask_key

    def labelled_set(self, data: Sequence[Mapping], fit: bool) -> tuple[torch.Tensor, np.ndarray]:
        items = [data[int(i)] for i in self.item_indices(len(data), fit)]
        images = [torch.as_tensor(item[self.image_key]).float() for item in items]
        masks = [item.get(self.mask_key) for item in items]
        masks = [None if mask is None or isinstance(mask, str) else mask for mask in masks]  # str: an unread path
        labels = [int(item.get(self.label_key, -1)) for item in items]
        crops, crop_labels, _ = lesion_patches(images, masks, self.crop_size, self.lesion_free_per_image,
                                               self.seed, self.min_lesion_pixels, labels)
        return crops, crop_labels

    def measure(self, network: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """``ClassificationProbe``'s scores of the crops, with ``crop_size`` (pixels) for the tables."""
        return {**super().measure(network, device), "crop_size": self.crop_size}

    def describe(self, s: Mapping[str, float], r: Mapping[str, float]) -> str:
        return (f"lesion-patch probe ({self.crop_size}-px crops; fit on {s['n_fit']} training crops, scored on "
                f"{s['n']} validation crops): AUC {s['auc']:.4f} (random init {r['auc']:.4f}), accuracy "
                f"{s['accuracy']:.4f} (random init {r['accuracy']:.4f}, majority class {s['majority_rate']:.4f})")


__all__ = ["CLASS_NAMES", "LesionPatchProbe", "crop_corner", "lesion_centres", "lesion_patches"]
