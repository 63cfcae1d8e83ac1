"""SimSiam's symmetric negative cosine loss with a stop-gradient on the target branch (Chen and He, CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean_i cos(p_i, stopgrad(z_i))``: -1 when every prediction points along its target."""
    return -F.cosine_similarity(prediction.float(), target.detach().float(), dim=1).mean()


class SimSiamLoss(nn.Module):
    """``L = D(p1, z2) / 2 + D(p2, z1) / 2`` with ``D = negative_cosine``; range [-1, 1], -1 at perfect agreement.

    ``forward(p1, p2, z1, z2)``: predictions and projections ``(B, dim)`` of the two views. No gradient flows into
    ``z1`` or ``z2`` (the stop-gradient that keeps SimSiam from collapsing without negative pairs).
    """

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
