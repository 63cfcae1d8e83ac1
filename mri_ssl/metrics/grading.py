"""Joint DR / DME grading metrics of IDRiD's grading task (the paper's "joint accuracy", Table B.1).

Each image has a diabetic-retinopathy grade (0-4) and a diabetic-macular-oedema risk grade (0-2). Over n images:

    DR accuracy      = (1/n) sum_i [dr_pred_i == dr_i]
    DME accuracy     = (1/n) sum_i [dme_pred_i == dme_i]
    average accuracy = (DR accuracy + DME accuracy) / 2
    joint accuracy   = (1/n) sum_i [dr_pred_i == dr_i and dme_pred_i == dme_i]

Joint accuracy is at most the smaller of the two accuracies and at least their sum minus one.

``JointAccuracyMetric`` is the same joint accuracy as a MONAI cumulative metric over (B, 5 + 3) logits and (B, 2)
grade pairs, and ``JointAccuracy`` its ignite handler (the key validation metric of joint grading fine-tuning).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from mri_ssl.errors import InputError
from mri_ssl.grades import DR_GRADES
from mri_ssl.losses.grading import split_grading_logits


def grading_accuracies(dr_predicted, dr_true, dme_predicted, dme_true) -> dict[str, float]:
    """``dr_accuracy``, ``dme_accuracy``, ``average_accuracy`` and ``joint_accuracy`` of integer grade vectors."""
    arrays = [np.asarray(a).astype(np.int64).ravel() for a in (dr_predicted, dr_true, dme_predicted, dme_true)]
    if len({a.size for a in arrays}) != 1 or arrays[0].size == 0:
        raise InputError("grades", f"expected four grade vectors of one non-zero length, got lengths "
                                   f"{[a.size for a in arrays]}")
    dr_correct = arrays[0] == arrays[1]
    dme_correct = arrays[2] == arrays[3]
    dr, dme = float(dr_correct.mean()), float(dme_correct.mean())
    return {"dr_accuracy": dr, "dme_accuracy": dme, "average_accuracy": (dr + dme) / 2.0,
            "joint_accuracy": float(np.logical_and(dr_correct, dme_correct).mean())}


def joint_accuracy(dr_predicted, dr_true, dme_predicted, dme_true) -> float:
    """Fraction of images whose DR grade *and* DME grade are both predicted correctly."""
    return grading_accuracies(dr_predicted, dr_true, dme_predicted, dme_true)["joint_accuracy"]


class JointAccuracyMetric(CumulativeIterationMetric):
    """Joint accuracy over batches of ``y_pred`` (B, 5 + 3) logits (or a list of (8,) rows) and ``y`` (B, 2) grades
    (DR, DME); ``aggregate()`` returns it as a 0-d tensor."""

    def __init__(self, dr_grades: int = DR_GRADES):
        super().__init__()
        self.dr_grades = int(dr_grades)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dr_logits, dme_logits = split_grading_logits(torch.as_tensor(y_pred).float(), self.dr_grades)
        y = torch.as_tensor(y).long().view(-1, 2)
        correct = (dr_logits.argmax(dim=1) == y[:, 0]) & (dme_logits.argmax(dim=1) == y[:, 1])
        return correct.float().view(-1, 1)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise InputError("joint accuracy", "no cases were scored")
        return data.float().mean()


class JointAccuracy(IgniteMetricHandler):
    """Ignite handler of ``JointAccuracyMetric`` (e.g. ``val_joint_accuracy``, a validation key metric)."""

    def __init__(self, output_transform: Callable = lambda x: x, save_details: bool = True,
                 dr_grades: int = DR_GRADES):
        super().__init__(metric_fn=JointAccuracyMetric(dr_grades), output_transform=output_transform,
                         save_details=save_details)
