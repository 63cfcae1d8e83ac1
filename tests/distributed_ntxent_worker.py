"""Worker for the distributed NT-Xent test: 2+ CPU processes (gloo) meeting through a file store.

Started once per rank by ``tests/rank_processes.run_ranks`` (no port, so a busy machine's other distributed runs
cannot collide with it): ``python tests/distributed_ntxent_worker.py OUT_DIR``.

Every rank builds the same seeded global batch and keeps its own contiguous slice of items. Rank 0 writes
``OUT_DIR/results.pt`` holding the global inputs and, per rank, the loss, the gradient w.r.t. the rank's local
embeddings, and the parameter gradient of a DDP-wrapped linear projection after DDP's gradient averaging.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mri_ssl.losses import NTXentLoss
from rank_processes import end_worker, init_from_environment

GLOBAL_BATCH, IN_FEATURES, OUT_FEATURES, SEED = 8, 16, 12, 0


def make_global_inputs() -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """The seeded global batch: two (GLOBAL_BATCH, IN_FEATURES) views and an IN -> OUT linear projection."""
    g = torch.Generator().manual_seed(SEED)
    x1 = torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=g)
    x2 = x1 + 0.5 * torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=g)  # correlated views, like augmentations
    torch.manual_seed(SEED)
    return x1, x2, nn.Linear(IN_FEATURES, OUT_FEATURES)


def main(out_dir: Path) -> None:
    rank, world = init_from_environment(timeout_seconds=60)
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    x1, x2, projection = make_global_inputs()
    loss_fn = NTXentLoss(temperature=0.5)

    # Gradient w.r.t. the rank's own embeddings (what the all-gather's backward delivers to this rank).
    z1 = x1[local].clone().requires_grad_(True)
    z2 = x2[local].clone().requires_grad_(True)
    loss = loss_fn(z1, z2)
    loss.backward()

    # The training situation: a DDP-wrapped projection, whose parameter gradients DDP averages over ranks.
    model = DistributedDataParallel(projection)
    model_loss = loss_fn(model(x1[local]), model(x2[local]))
    model_loss.backward()

    mine = {
        "loss": loss.detach(), "grad_z1": z1.grad, "grad_z2": z2.grad, "model_loss": model_loss.detach(),
        "grad_weight": model.module.weight.grad, "grad_bias": model.module.bias.grad,
    }
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        torch.save({"world_size": world, "x1": x1, "x2": x2, "ranks": everyone}, out_dir / "results.pt")
    end_worker()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
