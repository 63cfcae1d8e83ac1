"""Loss of joint DR / DME grading (IDRiD): one softmax cross-entropy per head, summed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.grades import DR_GRADES


def split_grading_logits(logits: torch.Tensor, dr_grades: int = DR_GRADES) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, dr_grades + dme_grades) logits of a two-head grader -> (DR logits, DME logits)."""
    if logits.ndim != 2 or logits.shape[1] <= dr_grades:
        raise InputError("logits", f"expected (B, {dr_grades} + DME grades) joint grading logits, got "
                                   f"{tuple(logits.shape)}")
    return logits[:, :dr_grades], logits[:, dr_grades:]


class JointGradingLoss(nn.Module):
    """``CE(DR logits, DR grade) + CE(DME logits, DME grade)``, each the mean over the batch.

    ``forward(logits, grades)``: ``logits`` (B, dr_grades + dme_grades) from ``JointGradingClassifier``, ``grades``
    (B, 2) integer (DR, DME) pairs. Computed in float32.
    """

    def __init__(self, dr_grades: int = DR_GRADES):
        super().__init__()
        self.dr_grades = int(dr_grades)

    def forward(self, logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        grades = torch.as_tensor(grades)
        if grades.ndim != 2 or grades.shape[1] != 2 or grades.shape[0] != logits.shape[0]:
            raise InputError("grades", f"expected (B, 2) (DR, DME) grades for {logits.shape[0]} images, got "
                                       f"{tuple(grades.shape)}")
        dr_logits, dme_logits = split_grading_logits(logits.float(), self.dr_grades)
        grades = grades.long().to(logits.device)
        return F.cross_entropy(dr_logits, grades[:, 0]) + F.cross_entropy(dme_logits, grades[:, 1])
