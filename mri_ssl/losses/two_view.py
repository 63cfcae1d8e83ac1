"""The batch layout shared by the two-view contrastive losses (NT-Xent, SupCon), single-process or across ranks.

A rank holds B items seen in two views, ``z1`` and ``z2`` (B, D). Its 2B *anchors* are its own L2-normalised rows
(view-1 rows, then view-2 rows). The *keys* they are scored against are every rank's rows, laid out exactly as one
process holding the global batch of N = B * world items would lay them out: all ranks' view-1 rows in rank order,
then all ranks' view-2 rows (2N, D). The keys come from the differentiable all-gather
(``mri_ssl.distributed.all_gather_with_grad``), so an encoder also learns from the other ranks' anchors.

Each loss computes the mean over its local anchors; because every rank has the same B, the mean of the per-rank
losses is the loss of the global batch. ``global_value`` returns that global loss on every rank while keeping the
local loss's gradient; see ``NTXentLoss.forward`` for why DistributedDataParallel's gradient averaging then yields
exactly the single-process gradient of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mri_ssl.distributed import all_gather_with_grad, world_size
from mri_ssl.errors import InputError


@dataclass
class TwoViewBatch:
    """``anchors`` (2B, D) this rank's normalised rows; ``keys`` (2N, D) everyone's; ``anchor_index`` (2B,) each
    anchor's row in ``keys`` (itself, never its own negative or positive); ``positive_index`` (2B,) the row of the other
    view of the same item; ``world`` and ``rank``."""

    anchors: torch.Tensor
    keys: torch.Tensor
    anchor_index: torch.Tensor
    positive_index: torch.Tensor
    world: int
    rank: int

    def logits(self, temperature: float) -> torch.Tensor:
        """(2B, 2N) cosine similarities / temperature, each anchor's own position set to -inf."""
        logits = self.anchors @ self.keys.T / temperature
        own = (torch.arange(len(self.anchors), device=logits.device), self.anchor_index)
        return logits.index_put(own, torch.tensor(float("-inf"), device=logits.device))


def two_view_batch(z1: torch.Tensor, z2: torch.Tensor, gather_distributed: bool = True) -> TwoViewBatch:
    """Normalise (in float32) and, under torch.distributed with ``gather_distributed``, gather the keys.

    Call it with autocast disabled: logits at bf16 / fp16 lose the small differences the softmax feeds on.
    """
    check_pair(z1, z2)
    batch = z1.shape[0]
    world = world_size() if gather_distributed else 1
    anchors = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    if world > 1:
        rank = dist.get_rank()
        keys = torch.cat([all_gather_with_grad(anchors[:batch]), all_gather_with_grad(anchors[batch:])])
    else:
        rank, keys = 0, anchors
    n_items = batch * world
    item = torch.arange(batch, device=anchors.device) + rank * batch
    return TwoViewBatch(anchors=anchors, keys=keys, anchor_index=torch.cat([item, item + n_items]),
                        positive_index=torch.cat([item + n_items, item]), world=world, rank=rank)


def gather_labels(labels: torch.Tensor, world: int) -> torch.Tensor:
    """(B,) labels -> (2N,) labels of the keys (every rank's labels in rank order, once per view); no gradient."""
    labels = labels.reshape(-1)
    if world > 1:
        parts = [torch.empty_like(labels) for _ in range(world)]
        dist.all_gather(parts, labels.contiguous())
        labels = torch.cat(parts)
    return torch.cat([labels, labels])


def global_value(local_loss: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``local_loss`` over ranks as the value, ``local_loss``'s gradient as the gradient."""
    if world == 1:
        return local_loss
    global_loss = local_loss.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= world
    return local_loss + (global_loss - local_loss.detach())


def check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
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
