"""Test-set evaluation of the fundus bundles: classification (+ CAM localisation) and lesion segmentation.

Each function (coarse classification with CAM localisation, joint DR / DME grading, lesion segmentation) runs the
network over a dataset of preprocessed cases, writes ``per_case.csv``, ``summary.json`` and
``summary.md`` to ``output_dir`` (atomically) and returns the summary dict; nothing is typed in, every number comes
from the run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mri_ssl.atomic import atomic_write_text
from mri_ssl.data.fundus import ABNORMAL_KEY
from mri_ssl.engines.checkpoint import as_flag
from mri_ssl.errors import InputError
from mri_ssl.losses.grading import split_grading_logits
from mri_ssl.metrics.fundus import accuracy, average_precision, cam_iou, dice, f1_score, pointing_game_hit, roc_auc
from mri_ssl.metrics.grading import grading_accuracies
from mri_ssl.networks.cam import minmax_normalise


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


def _cases(dataset: Iterable, progress: bool, description: str):
    return tqdm(dataset, desc=description, unit="image", disable=not as_flag(progress))


@torch.no_grad()
def evaluate_classification(network: torch.nn.Module, dataset: Iterable[dict], output_dir: str | os.PathLike,
                            device: str | torch.device = "cpu", cam_localisation: bool = False,
                            cam_threshold: float = 0.5, progress: bool = True) -> dict:
    """ROC-AUC, F1 (abnormal class) and accuracy at argmax; with ``cam_localisation`` also the pointing-game
    accuracy and the mean IoU of ``CAM >= cam_threshold`` over abnormal images with a non-empty ``mask``.

    Cases are dicts with ``image`` (3, H, W) and ``abnormal``; ``mask`` (1, H, W) for localisation. The CAM is the
    abnormal class's, upsampled bilinearly to the image and min-max normalised.
    """
    device = torch.device(device)
    network = network.to(device).eval()
    rows, probabilities, labels, hits, ious = [], [], [], [], []
    for case in _cases(dataset, progress, "evaluating"):
        image = torch.as_tensor(case["image"]).to(device=device, dtype=torch.float32)[None]
        logits, cams = network(image, return_cams=True)
        probability = float(torch.softmax(logits.float(), dim=1)[0, 1])
        label = int(case[ABNORMAL_KEY])
        row = {"image": os.path.basename(str(case.get("image_path", len(rows)))), "abnormal": label,
               "p_abnormal": f"{probability:.6f}"}
        probabilities.append(probability)
        labels.append(label)
        mask = case.get("mask")
        if as_flag(cam_localisation) and mask is not None and label == 1 and bool(torch.as_tensor(mask).any()):
            cam = F.interpolate(cams[:, 1:2].float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
            cam = minmax_normalise(cam)[0, 0].cpu().numpy()
            mask = torch.as_tensor(mask)[0].cpu().numpy() > 0
            hits.append(pointing_game_hit(cam, mask))
            ious.append(cam_iou(cam, mask, cam_threshold))
            row.update(pointing_hit=int(hits[-1]), cam_iou=f"{ious[-1]:.6f}")
        rows.append(row)
    probabilities, labels = np.array(probabilities), np.array(labels)
    predicted = (probabilities >= 0.5).astype(int)
    summary = {"cases": len(rows), "roc_auc": roc_auc(probabilities, labels), "f1": f1_score(predicted, labels),
               "accuracy": accuracy(predicted, labels)}
    if as_flag(cam_localisation):
        summary.update(localised_cases=len(hits),
                       pointing_game=float(np.mean(hits)) if hits else math.nan,
                       cam_iou=float(np.mean(ious)) if ious else math.nan, cam_threshold=float(cam_threshold))
    # Rows without localisation lack the two columns; fill them so the CSV is rectangular.
    for row in rows:
        if as_flag(cam_localisation):
            row.setdefault("pointing_hit", "")
            row.setdefault("cam_iou", "")
    return _write(rows, summary, output_dir)


@torch.no_grad()
def evaluate_grading(network: torch.nn.Module, dataset: Iterable[dict], output_dir: str | os.PathLike,
                     device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Joint DR / DME grading (IDRiD): DR accuracy, DME accuracy, their average and the joint accuracy (both grades
    right, ``mri_ssl.metrics.grading``) of a ``JointGradingClassifier``, the grade of each head being its argmax.

    Cases are dicts with ``image`` (3, H, W) and ``label`` = (DR grade, DME grade) (``fundus_entries(...,
    grades=True)``).
    """
    device = torch.device(device)
    network = network.to(device).eval()
    dr_grades = int(getattr(network, "dr_grades", 5))
    rows, grades = [], []
    for case in _cases(dataset, progress, "evaluating"):
        image = torch.as_tensor(case["image"]).to(device=device, dtype=torch.float32)[None]
        dr_logits, dme_logits = split_grading_logits(network(image).float(), dr_grades)
        dr_true, dme_true = (int(value) for value in torch.as_tensor(case["label"]).view(-1)[:2])
        dr_pred, dme_pred = int(dr_logits.argmax(dim=1)), int(dme_logits.argmax(dim=1))
        grades.append((dr_pred, dr_true, dme_pred, dme_true))
        rows.append({"image": os.path.basename(str(case.get("image_path", len(rows)))), "dr_grade": dr_true,
                     "dr_predicted": dr_pred, "dme_grade": dme_true, "dme_predicted": dme_pred,
                     "both_correct": int(dr_pred == dr_true and dme_pred == dme_true)})
    if not grades:
        raise InputError("evaluation", "no graded test cases were evaluated")
    summary = {"cases": len(rows), **grading_accuracies(*np.array(grades).T)}
    return _write(rows, summary, output_dir)


@torch.no_grad()
def evaluate_segmentation(network: torch.nn.Module, dataset: Iterable[dict], output_dir: str | os.PathLike,
                          device: str | torch.device = "cpu", label_key: str = "label", progress: bool = True) -> dict:
    """Lesion Dice and AUC-PR for a 2-class segmentation network (logits (1, 2, H, W)).

    Summary: ``dice_mean`` (mean per-image Dice over images with lesions), ``dice_pooled`` (all test pixels as one
    mask), ``auc_pr`` (average precision of the lesion probability over all test pixels) and
    ``image_auc_from_max_probability`` (ROC-AUC of the image's highest lesion probability vs its coarse label).
    """
    device = torch.device(device)
    network = network.to(device).eval()
    rows, scores, truths, dices, image_scores, image_labels = [], [], [], [], [], []
    intersection = total = 0
    for case in _cases(dataset, progress, "evaluating"):
        image = torch.as_tensor(case["image"]).to(device=device, dtype=torch.float32)[None]
        probability = torch.softmax(network(image).float(), dim=1)[0, 1].cpu().numpy()
        truth = torch.as_tensor(case[label_key])[0].cpu().numpy() > 0
        predicted = probability >= 0.5
        scores.append(probability.ravel())
        truths.append(truth.ravel())
        intersection += int(np.logical_and(predicted, truth).sum())
        total += int(predicted.sum() + truth.sum())
        case_dice = dice(predicted, truth)
        if truth.any():
            dices.append(case_dice)
        image_scores.append(float(probability.max()))
        image_labels.append(int(case.get(ABNORMAL_KEY, int(truth.any()))))
        rows.append({"image": os.path.basename(str(case.get("image_path", len(rows)))),
                     "lesion_pixels": int(truth.sum()), "predicted_pixels": int(predicted.sum()),
                     "dice": f"{case_dice:.6f}", "max_probability": f"{image_scores[-1]:.6f}"})
    summary = {"cases": len(rows), "cases_with_lesions": len(dices),
               "dice_mean": float(np.mean(dices)) if dices else math.nan,
               "dice_pooled": 1.0 if total == 0 else 2.0 * intersection / total,
               "auc_pr": average_precision(np.concatenate(scores), np.concatenate(truths)),
               "image_auc_from_max_probability": roc_auc(np.array(image_scores), np.array(image_labels))}
    return _write(rows, summary, output_dir)
