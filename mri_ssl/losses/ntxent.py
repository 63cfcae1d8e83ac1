"""NT-Xent (SimCLR) loss for two views, with negatives gathered across torch.distributed ranks.

For N items seen in two views there are 2N embeddings. Each one is an anchor whose positive is the other view of
the same item and whose negatives are the remaining 2N - 2 embeddings:

    l_a = -log( exp(s(a, p(a)) / tau) / sum_{k != a} exp(s(a, k) / tau) ),    s = cosine similarity,
    loss = mean over the 2N anchors of l_a.

Single-process this is exactly ``monai.losses.ContrastiveLoss``. Under torch.distributed with world size W, each
rank holds B items (N = B * W): it gathers every rank's embeddings with the differentiable all-gather, scores its
2B local anchors against all 2N keys and backpropagates the mean over its local anchors; because every rank has
the same B, the mean of these W per-rank losses is the global loss, which is the value returned on every rank
(see ``NTXentLoss.forward`` for why the gradients under DistributedDataParallel come out right).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mri_ssl.distributed import all_gather_with_grad, world_size
from mri_ssl.errors import InputError


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
        _check_pair(z1, z2)
        batch = z1.shape[0]
        world = world_size() if self.gather_distributed else 1

        # Logits at bf16/fp16 lose the small differences between similarities that the softmax feeds on, and
        # autocast would silently drop the matmul back to low precision, so it is turned off here.
        with torch.autocast(device_type=z1.device.type, enabled=False):
            local = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D): view-1 rows, then view-2 rows
            rank, keys = (dist.get_rank(), _gather_keys(local, batch)) if world > 1 else (0, local)  # keys (2N, D)
            n_items = batch * world

            logits = local @ keys.T / self.temperature  # (2B, 2N)
            # Global index of each local anchor in `keys`, and of its positive (the other view of the same item).
            item = torch.arange(batch, device=local.device) + rank * batch
            anchor_index = torch.cat([item, item + n_items])
            positive_index = torch.cat([item + n_items, item])
            # An embedding is neither its own positive nor a negative.
            self_position = (torch.arange(2 * batch, device=local.device), anchor_index)
            logits = logits.index_put(self_position, torch.tensor(float("-inf"), device=local.device))
            local_loss = F.cross_entropy(logits, positive_index)  # mean over this rank's 2B anchors
        if world == 1:
            return local_loss

        # Gradient scale under DDP. The global loss is L = (1/W) sum_r L_r, L_r being rank r's mean over its
        # local anchors (the same B on all ranks). Each rank backpropagates its own L_r; the all-gather's backward
        # sums the key-gradients of all ranks, so rank r's inputs receive sum_r' dL_r'/dz_r = W * dL/dz_r (measured
        # by tests/test_ntxent.py: exactly W times the single-process gradient). DDP then averages parameter
        # gradients over the W ranks, so the parameters get exactly dL/dtheta, the single-process gradient of the
        # global batch. Hence no rescaling: multiplying by W (or not averaging in DDP) would be W times too large.
        # The value returned is the global L itself, identical on every rank and fit for logging; the detached
        # correction carries no gradient, so the backward pass stays that of L_r described above.
        global_loss = local_loss.detach().clone()
        dist.all_reduce(global_loss)
        global_loss /= world
        return local_loss + (global_loss - local_loss.detach())


def _gather_keys(local: torch.Tensor, batch: int) -> torch.Tensor:
    """Every rank's embeddings as keys, laid out as one process holding the global batch would lay them out.

    Args:
        local: (2B, D) this rank's view-1 rows followed by its view-2 rows.
        batch: B, the same on every rank.

    Returns:
        (2N, D) with N = B * world: all ranks' view-1 rows in rank order, then all ranks' view-2 rows.
    """
    # Differentiable gather: our encoder also learns from the other ranks' anchors.
    view1 = all_gather_with_grad(local[:batch])
    view2 = all_gather_with_grad(local[batch:])
    return torch.cat([view1, view2])


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    """Raise InputError unless z1 and z2 are both (B, D) with the same B >= 1 and D >= 1."""
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor) or z.ndim != 2:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InputError(name, f"expected a 2-D (B, D) tensor of projections, got {shape}")
    if z1.shape != z2.shape:
        raise InputError("z1/z2", f"expected the two views to have the same (B, D) shape, got "
                                  f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 1 or z1.shape[1] < 1:
        raise InputError("z1/z2", f"expected at least one item and one feature (B >= 1, D >= 1), got "
                                  f"{tuple(z1.shape)}")
