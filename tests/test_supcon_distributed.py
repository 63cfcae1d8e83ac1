"""SupConLoss in two CPU processes (gloo): every rank returns the loss of the concatenated global batch,
and each rank's projections get world_size times the single-process gradient (DDP's averaging cancels the factor),
exactly as NT-Xent, whose gathering it shares."""

from pathlib import Path

import pytest
import torch

from mri_ssl.losses import SupConLoss
from rank_processes import run_ranks

WORKER = Path(__file__).with_name("distributed_supcon_worker.py")


def test_two_ranks_give_the_global_batch_supcon_loss_and_gradients(tmp_path):
    run_ranks(WORKER, tmp_path, [tmp_path])  # file store, no port; all ranks stopped past its timeout
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    world, ranks = results["world_size"], results["ranks"]
    assert world == 2

    x1, x2 = results["x1"].clone().requires_grad_(True), results["x2"].clone().requires_grad_(True)
    single_process = SupConLoss(0.1)(x1, x2, results["labels"])
    single_process.backward()
    for rank in ranks:
        assert rank["loss"].item() == pytest.approx(single_process.item(), abs=1e-5)
    # Each rank alone would give another value: its positives and negatives include the other rank's items.
    half = len(results["labels"]) // 2
    alone = SupConLoss(0.1, gather_distributed=False)(results["x1"][:half], results["x2"][:half],
                                                      results["labels"][:half])
    assert abs(alone.item() - single_process.item()) > 1e-3
    torch.testing.assert_close(torch.cat([r["grad_z1"] for r in ranks]), world * x1.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["grad_z2"] for r in ranks]), world * x2.grad, atol=1e-6, rtol=1e-5)
