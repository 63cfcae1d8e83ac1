"""A tiny copy of IDRiD's published folder layout (grading CSVs, images, lesion masks), written by the tests."""

import functools
from pathlib import Path

import numpy as np
from PIL import Image

GRADING = "B. Disease Grading"
HEADER = "Image name,Retinopathy grade,Risk of macular edema \n"  # the published header ends with a space


@functools.lru_cache(maxsize=4)
def _retina(size: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.retina()).resize((size, size), Image.BOX), dtype=np.float32)


def _photograph(path: Path, size: int, seed: int) -> Path:
    """A real fundus photograph (scikit-image's), shifted in colour per image, saved as JPEG."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(_retina(size) * rng.uniform(0.8, 1.2, size=3), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def write_fake_idrid(folder: Path, training_grades, testing_grades, size: int = 32,
                     segmentation: bool = False) -> Path:
    """IDRiD's ``B. Disease Grading`` layout with the given (DR, DME) grades, image names IDRiD_001, IDRiD_002, ...

    Training images come first, then testing ones. With ``segmentation`` also ``A. Segmentation`` with one image
    (IDRiD_01) and two lesion masks (one pixel each). Returns ``folder``.
    """
    first_test = 1 + len(training_grades)
    for split, csv_name, grades, offset in (
            ("a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", training_grades, 1),
            ("b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", testing_grades, first_test)):
        rows = []
        for index, (dr, dme) in enumerate(grades):
            name = f"IDRiD_{offset + index:03d}"
            _photograph(folder / GRADING / "1. Original Images" / split / f"{name}.jpg", size, offset + index)
            rows.append(f"{name},{dr},{dme}\n")
        labels = folder / GRADING / "2. Groundtruths" / csv_name
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text(HEADER + "".join(rows))
    if segmentation:
        seg = folder / "A. Segmentation"
        _photograph(seg / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg", size, 0)
        truth = seg / "2. All Segmentation Groundtruths" / "a. Training Set"
        for lesion, sub, pixel in (("MA", "1. Microaneurysms", (0, 0)), ("EX", "3. Hard Exudates", (-1, -1))):
            mask = np.zeros((size, size), np.uint8)
            mask[pixel] = 255
            (truth / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(truth / sub / f"IDRiD_01_{lesion}.tif")
    return folder
