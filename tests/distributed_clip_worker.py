"""Worker for the distributed CLIP-loss test: 2 CPU processes (gloo) meeting through a file store.

Started once per rank by ``tests/rank_processes.run_ranks`` (no port, so a busy machine's other distributed runs
cannot collide with it): ``python tests/distributed_clip_worker.py OUT_DIR``.

Every rank builds the same seeded global batch of (video, text) embeddings and keeps its own contiguous slice of
pairs. Rank 0 writes ``OUT_DIR/results.pt`` with the global inputs and, per rank, the loss and the gradients with
respect to the rank's local embeddings and the (shared) log logit scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mri_ssl.losses import CLIPLoss
from rank_processes import end_worker, init_from_environment

GLOBAL_BATCH, FEATURES, SEED = 8, 6, 0


def make_global_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded global batch: (GLOBAL_BATCH, FEATURES) video and correlated text embeddings."""
    g = torch.Generator().manual_seed(SEED)
    video = torch.randn(GLOBAL_BATCH, FEATURES, generator=g)
    return video, video + 0.7 * torch.randn(GLOBAL_BATCH, FEATURES, generator=g)


def main(out_dir: Path) -> None:
    rank, world = init_from_environment(timeout_seconds=60)
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    video, text = make_global_inputs()
    loss_fn = CLIPLoss()
    v = video[local].clone().requires_grad_(True)
    t = text[local].clone().requires_grad_(True)
    loss = loss_fn(v, t)
    loss.backward()
    mine = {"loss": loss.detach(), "grad_video": v.grad, "grad_text": t.grad,
            "grad_log_scale": loss_fn.log_logit_scale.grad.detach()}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        torch.save({"world_size": world, "video": video, "text": text, "ranks": everyone}, out_dir / "results.pt")
    end_worker()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
