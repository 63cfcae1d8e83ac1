"""Test-set evaluation of the fundus bundles: classification (+ CAM localisation), joint DR / DME grading and lesion
segmentation.

Each task has a *scorer* that turns one case and the network's output for it into a per-case row, and at the end
into a summary. ``FundusEvaluationReport`` attaches a scorer to a MONAI evaluator (the bundle's ``evaluate.json`` is
a ``SupervisedEvaluator`` over the test split with this handler), and the functions ``evaluate_classification`` /
``evaluate_grading`` / ``evaluate_segmentation`` run the same scorers over a dataset without an engine (scripts,
notebooks). Either way ``per_case.csv``, ``summary.json`` and ``summary.md`` are written to ``output_dir``
(atomically); nothing is typed in, every number comes from the run. ``CAMInferer`` makes an evaluator's ``pred`` the
logits *and* the CAMs of a ``CAMClassifier``, which the pointing game and CAM IoU need.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.inferers import Inferer
from tqdm.auto import tqdm

from mri_ssl.data.photo.fundus import ABNORMAL_KEY
from mri_ssl.engines.report_handler import EvaluationReport
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text
from mri_ssl.losses.grading import split_grading_logits
from mri_ssl.metrics.classification import accuracy, f1_score, roc_auc
from mri_ssl.metrics.fundus import average_precision, cam_iou, check_pointing_tolerance, dice, pointing_distance
from mri_ssl.metrics.grading import grading_accuracies
from mri_ssl.parameters import as_flag
from mri_ssl.transforms.heatmaps import minmax_normalise

logger = logging.getLogger(__name__)


def _write(rows: list[dict], summary: dict, output_dir: str | os.PathLike) -> dict:
    output_dir = Path(output_dir)
    if not rows:
        raise InputError("evaluation", "no test cases were evaluated")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output_dir / "per_case.csv", text.getvalue())
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=1))
    lines = ["| metric | value |", "|---|---|"] + [
        f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in summary.items()]
    atomic_write_text(output_dir / "summary.md", "\n".join(lines) + "\n")
    return summary


def _image_name(case: Mapping, index: int) -> str:
    return os.path.basename(str(case.get("image_path", index)))


def _logits(prediction: Any) -> torch.Tensor:
    return torch.as_tensor(prediction["logits"] if isinstance(prediction, Mapping) else prediction).float()


class CAMInferer(Inferer):
    """``network(inputs, return_cams=True)`` as ``{"logits": (B, C), "cams": (B, C, h, w)}`` for an evaluator's
    ``pred`` (MONAI decollates the dict per case)."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
        logits, cams = network(inputs, *args, return_cams=True, **kwargs)
        return {"logits": logits, "cams": cams}


class ClassificationScorer:
    """ROC-AUC, F1 (abnormal class) and accuracy at p >= 0.5; with ``cam_localisation`` also, over abnormal images
    with a non-empty ``mask``: the pointing-game accuracy (``pointing_game``: the CAM's maximum inside a lesion;
    ``pointing_game_tolerant``: within ``pointing_tolerance`` pixels of one, as Zhang et al. count a hit), the median
    distance from the maximum to the nearest lesion pixel and the mean IoU of ``CAM >= cam_threshold``.

    ``add(case, prediction)``: ``case`` holds ``image`` (3, H, W), ``abnormal`` and, for localisation, ``mask``
    (1, H, W); ``prediction`` is the logits (C,) or ``CAMInferer``'s ``{"logits", "cams"}`` (needed for
    localisation). The CAM is the abnormal class's (channel 1), upsampled bilinearly (``align_corners=False``: each
    CAM cell stays over the image pixels it was computed from) to the image and min-max normalised.
    """

    def __init__(self, cam_localisation: bool = False, cam_threshold: float = 0.5, pointing_tolerance: float = 0.0):
        self.cam_localisation = as_flag(cam_localisation, "cam_localisation")
        self.cam_threshold = float(cam_threshold)
        self.pointing_tolerance = check_pointing_tolerance(pointing_tolerance)
        self.reset()

    def reset(self) -> None:
        self.rows, self.probabilities, self.labels, self.distances, self.ious = [], [], [], [], []

    def add(self, case: Mapping, prediction: Any) -> None:
        probability = float(torch.softmax(_logits(prediction).reshape(-1), dim=0)[1])
        label = int(case[ABNORMAL_KEY])
        row = {"image": _image_name(case, len(self.rows)), "abnormal": label, "p_abnormal": f"{probability:.6f}"}
        self.probabilities.append(probability)
        self.labels.append(label)
        mask = case.get("mask")
        if self.cam_localisation and mask is not None and label == 1 and bool(torch.as_tensor(mask).any()):
            if not isinstance(prediction, Mapping) or "cams" not in prediction:
                raise InputError("evaluator", "CAM localisation needs the CAMs: use mri_ssl.engines.fundus_evaluation"
                                              ".CAMInferer as the evaluator's inferer")
            size = torch.as_tensor(case["image"]).shape[-2:]
            cams = torch.as_tensor(prediction["cams"]).float()[None, 1:2]
            cam = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
            cam = minmax_normalise(cam)[0, 0].cpu().numpy()
            mask = torch.as_tensor(mask)[0].cpu().numpy() > 0
            self.distances.append(pointing_distance(cam, mask))
            self.ious.append(cam_iou(cam, mask, self.cam_threshold))
            row.update(pointing_hit=int(self.distances[-1] == 0.0), pointing_distance_px=f"{self.distances[-1]:.3f}",
                       cam_iou=f"{self.ious[-1]:.6f}")
        elif self.cam_localisation:
            row.update(pointing_hit="", pointing_distance_px="", cam_iou="")  # so the CSV is rectangular
        self.rows.append(row)

    def finish(self) -> tuple[list[dict], dict]:
        probabilities, labels = np.array(self.probabilities), np.array(self.labels)
        predicted = (probabilities >= 0.5).astype(int)
        summary = {"cases": len(self.rows), "roc_auc": roc_auc(probabilities, labels),
                   "f1": f1_score(predicted, labels), "accuracy": accuracy(predicted, labels)}
        if self.cam_localisation:
            distances = np.array(self.distances)
            localised = len(distances) > 0
            summary.update(localised_cases=len(distances),
                           pointing_game=float(np.mean(distances == 0.0)) if localised else math.nan,
                           pointing_game_tolerant=float(np.mean(distances <= self.pointing_tolerance))
                           if localised else math.nan,
                           pointing_tolerance_px=self.pointing_tolerance,
                           pointing_distance_median_px=float(np.median(distances)) if localised else math.nan,
                           cam_iou=float(np.mean(self.ious)) if self.ious else math.nan,
                           cam_threshold=self.cam_threshold)
        return self.rows, summary


class GradingScorer:
    """Joint DR / DME grading (IDRiD): DR accuracy, DME accuracy, their average and the joint accuracy (both grades
    right, ``mri_ssl.metrics.grading``), each head's grade being its argmax.

    ``add(case, prediction)``: ``case["label"]`` = (DR grade, DME grade) (``fundus_entries(..., grades=True)``),
    ``prediction`` the (dr_grades + dme_grades,) logits of a ``JointGradingClassifier``.
    """

    def __init__(self, dr_grades: int = 5):
        self.dr_grades = int(dr_grades)
        self.reset()

    def reset(self) -> None:
        self.rows, self.grades = [], []

    def add(self, case: Mapping, prediction: Any) -> None:
        dr_logits, dme_logits = split_grading_logits(_logits(prediction).reshape(1, -1), self.dr_grades)
        dr_true, dme_true = (int(value) for value in torch.as_tensor(case["label"]).reshape(-1)[:2])
        dr_pred, dme_pred = int(dr_logits.argmax(dim=1)), int(dme_logits.argmax(dim=1))
        self.grades.append((dr_pred, dr_true, dme_pred, dme_true))
        self.rows.append({"image": _image_name(case, len(self.rows)), "dr_grade": dr_true, "dr_predicted": dr_pred,
                          "dme_grade": dme_true, "dme_predicted": dme_pred,
                          "both_correct": int(dr_pred == dr_true and dme_pred == dme_true)})

    def finish(self) -> tuple[list[dict], dict]:
        if not self.grades:
            raise InputError("evaluation", "no graded test cases were evaluated")
        return self.rows, {"cases": len(self.rows), **grading_accuracies(*np.array(self.grades).T)}


class SegmentationScorer:
    """Lesion Dice and AUC-PR of a 2-class segmentation network (logits (2, H, W) per case).

    Summary: ``dice_mean`` (mean per-image Dice over images with lesions), ``dice_pooled`` (all test pixels as one
    mask), ``auc_pr`` (average precision of the lesion probability over all test pixels) and
    ``image_auc_from_max_probability`` (ROC-AUC of the image's highest lesion probability vs its coarse label).
    """

    def __init__(self, label_key: str = "label"):
        self.label_key = label_key
        self.reset()

    def reset(self) -> None:
        self.rows, self.scores, self.truths, self.dices, self.image_scores, self.image_labels = [], [], [], [], [], []
        self.intersection = self.total = 0

    def add(self, case: Mapping, prediction: Any) -> None:
        probability = torch.softmax(_logits(prediction), dim=0)[1].cpu().numpy()
        truth = torch.as_tensor(case[self.label_key])[0].cpu().numpy() > 0
        predicted = probability >= 0.5
        self.scores.append(probability.ravel())
        self.truths.append(truth.ravel())
        self.intersection += int(np.logical_and(predicted, truth).sum())
        self.total += int(predicted.sum() + truth.sum())
        case_dice = dice(predicted, truth)
        if truth.any():
            self.dices.append(case_dice)
        self.image_scores.append(float(probability.max()))
        self.image_labels.append(int(case.get(ABNORMAL_KEY, int(truth.any()))))
        self.rows.append({"image": _image_name(case, len(self.rows)), "lesion_pixels": int(truth.sum()),
                          "predicted_pixels": int(predicted.sum()), "dice": f"{case_dice:.6f}",
                          "max_probability": f"{self.image_scores[-1]:.6f}"})

    def finish(self) -> tuple[list[dict], dict]:
        if not self.rows:
            raise InputError("evaluation", "no test cases were evaluated")
        return self.rows, {
            "cases": len(self.rows), "cases_with_lesions": len(self.dices),
            "dice_mean": float(np.mean(self.dices)) if self.dices else math.nan,
            "dice_pooled": 1.0 if self.total == 0 else 2.0 * self.intersection / self.total,
            "auc_pr": average_precision(np.concatenate(self.scores), np.concatenate(self.truths)),
            "image_auc_from_max_probability": roc_auc(np.array(self.image_scores), np.array(self.image_labels))}


class FundusEvaluationReport(EvaluationReport):
    """Handler of a MONAI evaluator (decollated output): feeds every case and its ``pred`` to ``scorer``, and when
    the evaluator completes writes the report to ``output_dir`` and puts the summary's finite numbers into
    ``engine.state.metrics`` (the summary itself is ``self.summary``). The scorer keeps the running sums, so a new
    evaluator run resets the scorer rather than rows."""

    def __init__(self, scorer, output_dir: str | os.PathLike, pred_key: str = "pred"):
        super().__init__(output_dir)
        self.scorer = scorer
        self.pred_key = pred_key
        self.summary: dict = {}

    def reset(self, engine: Engine) -> None:
        self.scorer.reset()

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise InputError("evaluator", "the fundus report needs decollated batches (SupervisedEvaluator("
                                          "decollate=True))")
        for case, result in zip(batch, output):
            self.scorer.add(case, result[self.pred_key])

    def write(self, engine: Engine) -> None:
        self.summary = _write(*self.scorer.finish(), self.output_dir)
        engine.state.metrics.update({key: value for key, value in self.summary.items()
                                     if isinstance(value, float) and math.isfinite(value)})
        logger.info("evaluation of %d cases written to %s: %s", self.summary["cases"], self.output_dir,
                    json.dumps(self.summary))


@torch.no_grad()
def _evaluate(network: torch.nn.Module, dataset: Iterable[dict], scorer, output_dir: str | os.PathLike,
              device: str | torch.device, progress: bool, inferer=None) -> dict:
    """Run ``network`` (through ``inferer``, default ``network(x)``) on each case and score it; write the report."""
    device = torch.device(device)
    network = network.to(device).eval()
    scorer.reset()
    for case in tqdm(dataset, desc="evaluating", unit="image", disable=not as_flag(progress)):
        image = torch.as_tensor(case["image"]).to(device=device, dtype=torch.float32)[None]
        output = inferer(image, network) if inferer is not None else network(image)
        prediction = {k: v[0] for k, v in output.items()} if isinstance(output, Mapping) else output[0]
        scorer.add(case, prediction)
    return _write(*scorer.finish(), output_dir)


def evaluate_classification(network: torch.nn.Module, dataset: Iterable[dict], output_dir: str | os.PathLike,
                            device: str | torch.device = "cpu", cam_localisation: bool = False,
                            cam_threshold: float = 0.5, progress: bool = True, pointing_tolerance: float = 0.0) -> dict:
    """``ClassificationScorer`` over ``dataset`` (CAMs from ``network(x, return_cams=True)``); returns the summary."""
    return _evaluate(network, dataset, ClassificationScorer(cam_localisation, cam_threshold, pointing_tolerance),
                     output_dir, device, progress, CAMInferer())


def evaluate_grading(network: torch.nn.Module, dataset: Iterable[dict], output_dir: str | os.PathLike,
                     device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """``GradingScorer`` over ``dataset`` for a ``JointGradingClassifier``; returns the summary."""
    return _evaluate(network, dataset, GradingScorer(int(getattr(network, "dr_grades", 5))), output_dir, device,
                     progress)


def evaluate_segmentation(network: torch.nn.Module, dataset: Iterable[dict], output_dir: str | os.PathLike,
                          device: str | torch.device = "cpu", label_key: str = "label", progress: bool = True) -> dict:
    """``SegmentationScorer`` over ``dataset``; returns the summary."""
    return _evaluate(network, dataset, SegmentationScorer(label_key), output_dir, device, progress)
