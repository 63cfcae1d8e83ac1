"""Classify every series of a DICOM folder with a trained sequence classifier: one CSV row per series.

Each series is read as ``mri-ssl manifest dicom`` reads it (``mri_ssl.data.cardiac.dicom_series``: central 20 % of the
slices, 84 x 84 by area averaging), each image is scaled as the bundle's preprocessing scales it (0 - 99.5th
percentile to [0, 1], clipped), the classifier's per-class sigmoid probabilities are averaged over the series'
images, and the class with the highest mean probability is the series' prediction. Unreadable files are skipped and
listed (log, and the CSV's ``skipped`` companion file) without stopping the run.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from monai.transforms import ScaleIntensityRangePercentiles
from tqdm.auto import tqdm

from mri_ssl.data.cardiac.dicom_series import CENTRAL_FRACTION, IMAGE_SIZE, read_series, series_images
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)


@torch.no_grad()
def classify_dicom_folder(network: torch.nn.Module, input_dir: str | os.PathLike, output_file: str | os.PathLike,
                          class_names: Sequence[str], device: str | torch.device = "cpu",
                          image_size: int = IMAGE_SIZE, fraction: float = CENTRAL_FRACTION,
                          progress: bool = True) -> Path:
    """Write ``output_file`` (CSV): patient, series UID and description, images used, the class the headers say
    (if they do), the predicted class and the mean probability of every class. Returns the path."""
    if input_dir in (None, ""):
        raise InputError("input_dir", "give the DICOM folder to classify, e.g. --input_dir /data/study_dicom")
    all_series, skipped = read_series(input_dir, progress=progress)
    scale = ScaleIntensityRangePercentiles(lower=0.0, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    network = network.to(device).eval()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["patient", "series_uid", "series_description", "images", "header_class", "predicted_class",
                     *[f"p_{name}" for name in class_names]])
    rows = 0
    for series in tqdm(all_series, desc="classifying series", unit="series", disable=not progress):
        images, failed = series_images(series, fraction, image_size)
        skipped.extend(failed)
        if not images:
            continue
        batch = torch.stack([torch.as_tensor(scale(torch.as_tensor(pixels)[None])).float() for _, pixels in images])
        probabilities = torch.sigmoid(network(batch.to(device))).float().mean(dim=0).cpu()
        writer.writerow([series.patient, series.uid, series.description, len(images), series.label or "",
                         class_names[int(probabilities.argmax())], *[f"{p:.6f}" for p in probabilities.tolist()]])
        rows += 1
    if rows == 0:
        raise InputError(input_dir, "no series could be classified (no readable MR images)")
    path = atomic_write_text(output_file, buffer.getvalue())
    if skipped:
        atomic_write_text(Path(str(output_file) + ".skipped.txt"),
                          "".join(f"{item.path}\t{item.problem}\n" for item in skipped))
    print(f"classified {rows} series into {path}" + (f"; skipped {len(skipped)} files" if skipped else ""))
    return path
