"""Per-case evaluation reports for MONAI evaluators: segmentation (Dice, HD95 in mm) and denoising (PSNR).

MONAI's metric handlers reduce over the dataset as they go, report HD95 in voxels and carry no case metadata. These
handlers score every case as the evaluator produces it, keep its subject / site / sequence, and at the end write a
per-case CSV, a summary JSON and a Markdown table broken down by site and by sequence (``mri_ssl.metrics.report``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine

from mri_ssl.engines.report_handler import EvaluationReport, source_name
from mri_ssl.errors import InputError
from mri_ssl.metrics import denoising_case_scores, format_summary_table, segmentation_case_scores, write_report

logger = logging.getLogger(__name__)

CASE_KEYS = ("subject", "site", "sequence")


def voxel_spacing_mm(image: torch.Tensor) -> tuple[float, ...]:
    """Voxel sizes in mm from a MetaTensor's affine (column norms), for HD95 in millimetres."""
    affine = getattr(image, "affine", None)
    if affine is None:
        raise InputError("image", "no affine in the image metadata: load it with LoadImaged so HD95 can be in mm")
    affine = np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
    spatial_dims = affine.shape[0] - 1
    return tuple(float(v) for v in np.linalg.norm(affine[:spatial_dims, :spatial_dims], axis=0))


class CaseReport(EvaluationReport):
    """Base of the report handlers: collect one row per case, write the report when the evaluator completes.

    Args:
        output_dir: where ``per_case.csv``, ``summary.json`` and ``summary.md`` go.
        case_keys: string fields copied from each data item into its row (from the manifest entry).
        image_key, pred_key: the items' keys of the input image and of the network output after postprocessing.
    """

    def __init__(self, output_dir: str | os.PathLike, case_keys: Sequence[str] = CASE_KEYS, image_key: str = "image",
                 pred_key: str = "pred"):
        super().__init__(output_dir)
        self.case_keys = tuple(case_keys)
        self.image_key = image_key
        self.pred_key = pred_key
        self.paths: dict[str, Path] = {}
        self.summary: dict = {}

    def score(self, item: Mapping, prediction: torch.Tensor) -> dict:
        raise NotImplementedError

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise InputError("evaluator",
                             "report handlers need decollated batches (SupervisedEvaluator(decollate=True))")
        for item, result in zip(batch, output):
            image = item[self.image_key]
            row = {"case": f"{len(self.rows):04d}", "image": source_name(image)}
            row.update({key: str(item.get(key, "")) for key in self.case_keys})
            row.update(self.score(item, result[self.pred_key]))
            self.rows.append(row)

    def write(self, engine: Engine) -> None:
        self.paths = write_report(self.rows, self.output_dir)
        self.summary = json.loads(Path(self.paths["summary_json"]).read_text())
        for metric, stats in self.summary.get("overall", {}).items():
            if isinstance(stats, dict) and stats.get("mean") is not None and math.isfinite(stats["mean"]):
                engine.state.metrics[metric] = float(stats["mean"])
        logger.info("evaluation of %d cases written to %s\n%s", len(self.rows), self.output_dir,
                    format_summary_table(self.summary))


class SegmentationReport(CaseReport):
    """Dice per class and mean, HD95 in mm with the explicit empty-structure policy, ``missed`` counts.

    Args:
        class_names: label value -> name (a manifest's ``labels``, keys may be strings); 0 is background.
        label_key: the items' key of the reference label map ``(1, *spatial)``.
    The prediction is ``(C, *spatial)`` probabilities / one-hot (argmax is taken) or ``(1, *spatial)`` labels.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Mapping, label_key: str = "label", **kwargs):
        super().__init__(output_dir, **kwargs)
        self.class_names = {int(value): str(name) for value, name in class_names.items()}
        self.label_key = label_key

    def score(self, item: Mapping, prediction: torch.Tensor) -> dict:
        label = item[self.label_key]
        prediction = torch.as_tensor(prediction)
        labels = prediction.argmax(dim=0) if prediction.shape[0] > 1 else prediction[0]
        return segmentation_case_scores(labels.cpu().numpy().astype(np.int64),
                                        torch.as_tensor(label)[0].cpu().numpy().astype(np.int64),
                                        self.class_names, voxel_spacing_mm(label))


class DenoisingReport(CaseReport):
    """PSNR of ``image - pred`` (the noisy input minus the predicted noise) against the clean image.

    Beside it, ``noisy_psnr_db`` (the noisy input itself against the clean image, same peak) and ``psnr_gain_db``
    (their difference): a head that has learnt nothing predicts zero noise and gains 0 dB, so a gain above 0 is the
    check that the head denoises at all.

    Args:
        clean_key: the items' key of the clean image (``AddGaussianNoised(clean_key=...)``).
    """

    def __init__(self, output_dir: str | os.PathLike, clean_key: str = "clean", **kwargs):
        super().__init__(output_dir, **kwargs)
        self.clean_key = clean_key

    def score(self, item: Mapping, prediction: torch.Tensor) -> dict:
        noisy = torch.as_tensor(item[self.image_key]).float().cpu()
        denoised = noisy - torch.as_tensor(prediction).float().cpu()
        clean = torch.as_tensor(item[self.clean_key]).float().cpu()
        scores = denoising_case_scores(denoised.numpy(), clean.numpy())
        scores["noisy_psnr_db"] = denoising_case_scores(noisy.numpy(), clean.numpy())["psnr_db"]
        scores["psnr_gain_db"] = scores["psnr_db"] - scores["noisy_psnr_db"]
        return scores
