"""Supervised contrastive loss (Khosla et al. 2020, L_out) for two views, the SupCon baseline of CAMContrast.

With 2B L2-normalised projections z and labels y (each item's label repeated for its two views), anchor a has
positives P(a) = {p != a : y_p = y_a} and

    l_a = -(1 / |P(a)|) * sum_{p in P(a)} log( exp(z_a . z_p / tau) / sum_{k != a} exp(z_a . z_k / tau) ),

the loss being the mean over anchors. With all labels distinct it equals NT-Xent. Computed in float32. This
implementation is single-process: under torch.distributed each rank contrasts its own batch only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mri_ssl.errors import InputError


class SupConLoss(nn.Module):
    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise InputError("temperature", f"expected a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2 or labels.numel() != z1.shape[0]:
            raise InputError("z1/z2/labels", f"expected two (B, D) projections and B labels, got "
                                             f"{tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(labels.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            y = torch.cat([labels.view(-1), labels.view(-1)])
            logits = z @ z.T / self.temperature
            eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(eye, float("-inf"))
            log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            positives = (y[:, None] == y[None, :]) & ~eye
            # Every anchor has at least its other view as a positive, so the count is never 0.
            summed = log_probability.masked_fill(~positives, 0.0).sum(dim=1)
            return -(summed / positives.sum(dim=1)).mean()
