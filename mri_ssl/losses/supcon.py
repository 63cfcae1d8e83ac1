"""Supervised contrastive loss (Khosla et al. 2020, L_out) for two views, the SupCon baseline of CAMContrast.

With 2N L2-normalised projections z and labels y (each item's label repeated for its two views), anchor a has
positives P(a) = {p != a : y_p = y_a} and

    l_a = -(1 / |P(a)|) * sum_{p in P(a)} log( exp(z_a . z_p / tau) / sum_{k != a} exp(z_a . z_k / tau) ),

the loss being the mean over anchors. With all labels distinct it equals NT-Xent. Computed in float32.

Under torch.distributed each rank scores its 2B local anchors against every rank's projections and labels (the
differentiable all-gather and layout of ``mri_ssl.losses.two_view``, shared with ``NTXentLoss``), so positives and
negatives come from the global batch; the value returned on every rank is the single-process loss of the
concatenated global batch, and DistributedDataParallel's gradient averaging gives its gradient (as for NT-Xent).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.losses.two_view import gather_labels, global_value, two_view_batch


class SupConLoss(nn.Module):
    """SupCon over two views with labels.

    Args:
        temperature: tau > 0 (0.05 in CAMContrast).
        gather_distributed: under torch.distributed (world size > 1), contrast against every rank's projections;
            every rank must then pass the same batch size B.
    """

    def __init__(self, temperature: float = 0.05, gather_distributed: bool = True):
        super().__init__()
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise InputError("temperature", f"expected a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z1``, ``z2`` (B, D) projections of the two views, ``labels`` (B,) -> () float32 loss."""
        if z1.shape != z2.shape or z1.ndim != 2 or labels.numel() != z1.shape[0]:
            raise InputError("z1/z2/labels", f"expected two (B, D) projections and B labels, got "
                                             f"{tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(labels.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            views = two_view_batch(z1, z2, self.gather_distributed)
            key_labels = gather_labels(labels.to(z1.device), views.world)  # (2N,)
            local_labels = torch.cat([labels.reshape(-1), labels.reshape(-1)]).to(z1.device)  # (2B,)
            logits = views.logits(self.temperature)  # (2B, 2N), own position -inf
            log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            positives = local_labels[:, None] == key_labels[None, :]
            positives[torch.arange(len(local_labels), device=z1.device), views.anchor_index] = False
            # Every anchor has at least its other view as a positive, so the count is never 0.
            summed = log_probability.masked_fill(~positives, 0.0).sum(dim=1)
            local_loss = -(summed / positives.sum(dim=1)).mean()
        return global_value(local_loss, views.world)
