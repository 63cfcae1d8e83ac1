"""Embedded fundus demo data: real photographs from scikit-image, with synthetic lesions whose masks are known.

scikit-image ships one real colour fundus photograph (``skimage.data.retina``, 1411 x 1411) and a real grey fundus
patch showing microaneurysms (``skimage.data.microaneurysms``, 102 x 102). Each demo image is the photograph under a
random rotation, flip, zoom and colour jitter. Half of them are *abnormal*: they carry 2..``max_lesions`` synthetic
lesions inside the fundus, either bright yellowish exudate-like blobs or dark red haemorrhage-like blobs of random
size and elongation, textured with the real microaneurysm patch. Every lesion pixel is saved in a mask, so CAM
localisation and lesion segmentation are scored against a known truth. Normal images carry no lesion (empty mask).

Files: ``images/fundus_XXX.png`` (RGB), ``masks/fundus_XXX.png`` (0 / 255) and ``datalist.json`` with
``training`` / ``validation`` / ``test`` splits; each image is its own subject.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from mri_ssl.data.datalist import DATALIST_NAME, DemoWriter
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output, atomic_write_text

DEMO_KIND = "fundus_demo"
SOURCE_SIZE = 512  # the 1411-pixel photograph is first reduced to this, then every demo image is drawn from it
FOREGROUND_LEVEL = 15.0  # grey level (0..255) above which a pixel is inside the fundus (the paper's threshold)


def _source_photograph() -> tuple[np.ndarray, np.ndarray]:
    """The real retina photograph at ``SOURCE_SIZE`` (float 0..255, (H, W, 3)) and its microaneurysm texture."""
    from skimage import data, transform

    retina = transform.resize(data.retina().astype(np.float32) / 255.0, (SOURCE_SIZE, SOURCE_SIZE, 3),
                              anti_aliasing=True, preserve_range=True) * 255.0
    patch = data.microaneurysms().astype(np.float32)
    # Detail of the real patch (its local deviation from a smooth background), scaled to about +-1.
    detail = patch - ndimage.gaussian_filter(patch, 8.0)
    detail /= max(float(np.abs(detail).max()), 1e-6)
    return retina, detail


def _augment(retina: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random rotation (any angle: the fundus is round), flip, zoom 0.9..1.1 and colour jitter; (size, size, 3)."""
    from skimage import transform

    image = ndimage.rotate(retina, float(rng.uniform(0, 360)), axes=(0, 1), reshape=False, order=1, mode="constant")
    if rng.random() < 0.5:
        image = image[:, ::-1]
    zoom = float(rng.uniform(0.9, 1.1))
    crop = int(round(SOURCE_SIZE / zoom))
    if crop <= SOURCE_SIZE:
        start = (SOURCE_SIZE - crop) // 2 + rng.integers(-SOURCE_SIZE // 40, SOURCE_SIZE // 40 + 1, size=2)
        start = np.clip(start, 0, SOURCE_SIZE - crop)
        image = image[start[0]:start[0] + crop, start[1]:start[1] + crop]
    else:
        pad = (crop - SOURCE_SIZE) // 2
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    image = transform.resize(image, (size, size, 3), anti_aliasing=True, preserve_range=True)
    brightness = rng.uniform(0.85, 1.15)
    contrast = rng.uniform(0.85, 1.15)
    channel_gain = rng.uniform(0.92, 1.08, size=3)
    foreground = image.mean(axis=2, keepdims=True) > FOREGROUND_LEVEL
    mean = image[foreground[..., 0]].mean(axis=0) if foreground.any() else image.mean(axis=(0, 1))
    image = ((image - mean) * contrast + mean) * brightness * channel_gain
    return np.where(foreground, np.clip(image, 0, 255), 0.0)


def _add_lesions(image: np.ndarray, detail: np.ndarray, rng: np.random.Generator, max_lesions: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Paint 2..max_lesions exudate-like or haemorrhage-like blobs inside the fundus; return (image, mask)."""
    size = image.shape[0]
    grey = image.mean(axis=2)
    # Lesions sit well inside the fundus, not on its rim.
    inside = ndimage.binary_erosion(grey > FOREGROUND_LEVEL * 2, iterations=max(2, size // 12))
    candidates = np.argwhere(inside)
    if len(candidates) == 0:
        raise InputError("fundus demo", "no fundus pixels to place lesions in; the image is too dark")
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = ndimage.zoom(detail, size / detail.shape[0], order=1)[:size, :size]
    texture = np.pad(texture, ((0, size - texture.shape[0]), (0, size - texture.shape[1])), mode="wrap")
    mask = np.zeros((size, size), dtype=bool)
    result = image.copy()
    for _ in range(int(rng.integers(2, max_lesions + 1))):
        centre = candidates[rng.integers(len(candidates))]
        radius = float(rng.uniform(0.025, 0.06)) * size  # 2.5-6 % of the image width
        elongation = float(rng.uniform(1.0, 1.8))
        angle = float(rng.uniform(0, np.pi))
        dy, dx = rows - centre[0], cols - centre[1]
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / (radius * elongation)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
        profile = np.exp(-(u ** 2 + v ** 2) * 2.0)  # smooth blob: 1 at the centre, e^-2 = 0.14 at the radius
        local = np.roll(texture, tuple(int(s) for s in rng.integers(0, size, size=2)), axis=(0, 1))
        strength = profile * (1.0 + 0.3 * local)
        if rng.random() < 0.5:  # exudate: bright, yellowish
            result += strength[..., None] * np.array([90.0, 80.0, 10.0]) * rng.uniform(0.8, 1.2)
        else:  # haemorrhage: dark red
            result *= 1.0 - strength[..., None] * np.array([0.45, 0.75, 0.75]) * rng.uniform(0.8, 1.1)
        mask |= profile > 0.3
    mask &= grey > FOREGROUND_LEVEL
    return np.clip(result, 0, 255), mask


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_output(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")


def write_fundus_demo(folder: str | os.PathLike, images: int = 40, validation_images: int = 8,
                      test_images: int = 12, size: int = 128, max_lesions: int = 6, seed: int = 0) -> Path:
    """Write the demo images, masks and ``datalist.json`` under ``folder``; return the datalist path.

    Args:
        images: total number of images (training gets what validation and test do not take).
        validation_images, test_images: images in those splits.
        size: width and height in pixels.
        max_lesions: most lesions on an abnormal image (at least 2).
        seed: the whole set is a function of the arguments.
    """
    images, validation_images, test_images = int(images), int(validation_images), int(test_images)
    if min(validation_images, test_images) < 0 or images - validation_images - test_images < 2:
        raise InputError("images", f"need at least 2 training images; got {images} images of which "
                                   f"{validation_images} validation and {test_images} test")
    if int(size) < 32:
        raise InputError("size", f"must be at least 32 pixels, got {size}")
    if int(max_lesions) < 2:
        raise InputError("max_lesions", f"must be at least 2, got {max_lesions}")
    folder = Path(folder)
    retina, detail = _source_photograph()
    rng = np.random.default_rng(int(seed))
    split_of = (["training"] * (images - validation_images - test_images) + ["validation"] * validation_images
                + ["test"] * test_images)
    datalist = {"name": "fundus demo", "kind": DEMO_KIND, "seed": int(seed), "size": int(size),
                "description": "skimage.data.retina under random rotation / flip / zoom / colour jitter; abnormal "
                               "images carry synthetic exudate- and haemorrhage-like lesions with saved masks",
                "labels": {"0": "normal", "1": "abnormal"}, "training": [], "validation": [], "test": []}
    for index, split in enumerate(split_of):
        image = _augment(retina, int(size), rng)
        abnormal = index % 2  # alternate, so every split has both classes
        mask = np.zeros(image.shape[:2], dtype=bool)
        if abnormal:
            image, mask = _add_lesions(image, detail, rng, int(max_lesions))
        name = f"fundus_{index:03d}"
        _save_png(np.round(image).astype(np.uint8), folder / "images" / f"{name}.png")
        _save_png(mask.astype(np.uint8) * 255, folder / "masks" / f"{name}.png")
        datalist[split].append({"image": f"images/{name}.png", "mask": f"masks/{name}.png", "abnormal": abnormal,
                                "subject": name, "site": "skimage_retina", "sequence": "fundus"})
    datalist["numTraining"] = len(datalist["training"])
    return atomic_write_text(folder / DATALIST_NAME, json.dumps(datalist, indent=1))


# The embedded default data of the fundus_camcontrast bundle (``resolve_datalist`` writes them on first use).
FUNDUS_DEMO = DemoWriter("fundus", write_fundus_demo)
