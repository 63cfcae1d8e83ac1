"""Worker for the distributed SupCon test: 2 CPU processes (gloo) meeting through a file store.

Started once per rank by ``tests/rank_processes.run_ranks`` (no port): ``python tests/distributed_supcon_worker.py
OUT_DIR``.

Every rank builds the same seeded global batch (two views and coarse labels) and keeps its own contiguous slice of
items. Rank 0 writes ``OUT_DIR/results.pt`` holding the global inputs and, per rank, the loss and the gradient w.r.t.
the rank's local projections.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mri_ssl.losses import SupConLoss
from rank_processes import end_worker, init_from_environment

GLOBAL_BATCH, DIM, SEED, TEMPERATURE = 8, 6, 0, 0.1


def make_global_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seeded global batch: two (GLOBAL_BATCH, DIM) views and 0/1 labels (both classes on each rank)."""
    g = torch.Generator().manual_seed(SEED)
    z1 = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    z2 = z1 + 0.5 * torch.randn(GLOBAL_BATCH, DIM, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return z1, z2, labels


def main(out_dir: Path) -> None:
    rank, world = init_from_environment(timeout_seconds=60)
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    x1, x2, labels = make_global_inputs()
    z1 = x1[local].clone().requires_grad_(True)
    z2 = x2[local].clone().requires_grad_(True)
    loss = SupConLoss(TEMPERATURE)(z1, z2, labels[local])
    loss.backward()
    mine = {"loss": loss.detach(), "grad_z1": z1.grad, "grad_z2": z2.grad}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        torch.save({"world_size": world, "x1": x1, "x2": x2, "labels": labels, "ranks": everyone},
                   out_dir / "results.pt")
    end_worker()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
