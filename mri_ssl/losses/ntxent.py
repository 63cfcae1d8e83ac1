"""NT-Xent (SimCLR) loss for two views, with negatives gathered across torch.distributed ranks.

For N items seen in two views there are 2N embeddings. Each one is an anchor whose positive is the other view of
the same item and whose negatives are the remaining 2N - 2 embeddings:

    l_a = -log( exp(s(a, p(a)) / tau) / sum_{k != a} exp(s(a, k) / tau) ),    s = cosine similarity,
    loss = mean over the 2N anchors of l_a.

Single-process this is exactly ``monai.losses.ContrastiveLoss``. Under torch.distributed with world size W, each
rank holds B items (N = B * W): it gathers every rank's embeddings with the differentiable all-gather, scores its
2B local anchors against all 2N keys and backpropagates the mean over its local anchors; because every rank has
the same B, the mean of these W per-rank losses is the global loss, which is the value returned on every rank
(see ``NTXentLoss.forward`` for why the gradients under DistributedDataParallel come out right). The gathering and
the layout are ``mri_ssl.losses.two_view``'s, shared with ``SupConLoss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.losses.two_view import global_value, two_view_batch


class NTXentLoss(nn.Module):
    """NT-Xent (normalised temperature-scaled cross entropy) of SimCLR, distributed-aware.

    Args:
        temperature: tau > 0 dividing the cosine similarities; 0.5 as in SimCLR and Chalcroft et al.
        gather_distributed: when torch.distributed is initialised with world size > 1, use the other ranks'
            embeddings as extra negatives. Every rank must then pass the same batch size B (e.g. a
            ``DistributedSampler`` with ``drop_last=True``), because all-gather needs equal shapes.

    The returned loss is a float32 scalar equal, on every rank, to the single-process loss over the concatenated
    global batch.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise InputError("temperature", f"expected a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Loss for B items seen in two views.

        Args:
            z1: (B, D) projections of view 1.
            z2: (B, D) projections of view 2; row i is the same item as row i of ``z1``.

        Returns:
            () float32 loss over all 2 * B * world_size anchors, the same on every rank. Its gradient is that of
            the mean over this rank's 2B anchors (scored against all keys), which DistributedDataParallel's
            gradient averaging turns into the gradient of the global loss.
        """
        # Logits at bf16/fp16 lose the small differences between similarities that the softmax feeds on, and
        # autocast would silently drop the matmul back to low precision, so it is turned off here.
        with torch.autocast(device_type=z1.device.type, enabled=False):
            views = two_view_batch(z1, z2, self.gather_distributed)  # anchors (2B, D), keys (2N, D)
            local_loss = F.cross_entropy(views.logits(self.temperature), views.positive_index)  # mean over 2B anchors

        # Gradient scale under DDP. The global loss is L = (1/W) sum_r L_r, L_r being rank r's mean over its
        # local anchors (the same B on all ranks). Each rank backpropagates its own L_r; the all-gather's backward
        # sums the key-gradients of all ranks, so rank r's inputs receive sum_r' dL_r'/dz_r = W * dL/dz_r (measured
        # by tests/test_ntxent.py: exactly W times the single-process gradient). DDP then averages parameter
        # gradients over the W ranks, so the parameters get exactly dL/dtheta, the single-process gradient of the
        # global batch. Hence no rescaling: multiplying by W (or not averaging in DDP) would be W times too large.
        # The value returned is the global L itself, identical on every rank and fit for logging; the detached
        # correction carries no gradient, so the backward pass stays that of L_r described above.
        return global_value(local_loss, views.world)
