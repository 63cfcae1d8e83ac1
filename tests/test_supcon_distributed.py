"""SupConLoss under torchrun (2 CPU processes, gloo): every rank returns the loss of the concatenated global batch,
and each rank's projections get world_size times the single-process gradient (DDP's averaging cancels the factor),
exactly as NT-Xent, whose gathering it shares."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mri_ssl.losses import SupConLoss

WORKER = Path(__file__).with_name("distributed_supcon_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_two_ranks_give_the_global_batch_supcon_loss_and_gradients(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(tmp_path)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
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
