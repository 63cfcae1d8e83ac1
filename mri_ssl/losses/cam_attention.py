"""Stage-1 loss of CAMContrast: cross-entropy plus lambda times the complementary guided attention loss (Eq. 2-4).

For a *correctly classified normal* image (``p^0(x) >= 0.5`` and ``y = 0``), with min-max normalised CAMs ``M^0``
(normal) and ``M^1`` (abnormal) of N pixels each:

    L_attn(x) = (1 / N) * sum_ij (1 - M^0_ij + M^1_ij)

It pushes the normal CAM to cover the whole image and the abnormal CAM to vanish; other images contribute 0. Both
terms are averaged over the batch: ``L = mean_i [CE_i + lambda * L_attn_i]`` with lambda = 0.01 in the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.transforms.heatmaps import MINMAX_EPSILON, minmax_normalise


def guided_attention_loss(cams: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, normal_class: int = 0,
                          abnormal_class: int = 1, epsilon: float = MINMAX_EPSILON) -> torch.Tensor:
    """Per-image complementary guided attention loss (B,), zero for images that are not correctly-classified normals.

    Args:
        cams: raw CAMs (B, C, h, w) from ``CAMClassifier(..., return_cams=True)``.
        logits: (B, C).
        labels: (B,) integer classes.
    """
    with torch.autocast(device_type=cams.device.type, enabled=False):
        maps = minmax_normalise(cams[:, [normal_class, abnormal_class]].float(), epsilon)
        probability_normal = torch.softmax(logits.float(), dim=1)[:, normal_class]
        selected = (probability_normal >= 0.5) & (labels.view(-1) == normal_class)
        per_image = (1.0 - maps[:, 0] + maps[:, 1]).flatten(1).mean(dim=1)
        return per_image * selected.to(per_image.dtype)


class CAMClassificationLoss(nn.Module):
    """``mean(CE) + attention_weight * mean(L_attn)``; returns a dict with ``loss``, ``ce`` and ``attention``."""

    def __init__(self, attention_weight: float = 0.01, normal_class: int = 0, abnormal_class: int = 1):
        super().__init__()
        weight = attention_weight
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise InputError("attention_weight", f"expected a finite number >= 0, got {attention_weight!r}")
        self.attention_weight = float(attention_weight)
        self.normal_class = int(normal_class)
        self.abnormal_class = int(abnormal_class)

    def forward(self, logits: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = labels.view(-1).long()
        ce = F.cross_entropy(logits.float(), labels)
        attention = guided_attention_loss(cams, logits, labels, self.normal_class, self.abnormal_class).mean()
        return {"loss": ce + self.attention_weight * attention, "ce": ce, "attention": attention}
