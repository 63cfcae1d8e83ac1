"""NTXentLoss: equal to MONAI's ContrastiveLoss in one process, exact on closed forms, float32 under autocast,
clear errors, and under torchrun the global-batch loss and gradients on every rank."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from monai.losses import ContrastiveLoss

from mri_ssl.errors import InputError
from mri_ssl.losses import NTXentLoss
from rank_processes import run_ranks

WORKER = Path(__file__).with_name("distributed_ntxent_worker.py")


def _load_worker():
    """The worker script as a module, for its seeded inputs (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("distributed_ntxent_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _views(batch, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=g)
    return z1, z1 + 0.7 * torch.randn(batch, dim, generator=g)


@pytest.mark.parametrize("batch,dim,temperature", [(1, 3, 0.5), (2, 5, 0.5), (7, 16, 0.5), (16, 4, 0.1), (5, 32, 2.0)])
def test_equals_monai_contrastive_loss_value_and_gradients(batch, dim, temperature):
    z1, z2 = _views(batch, dim, seed=batch)
    ours_inputs = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    monai_inputs = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]

    ours = NTXentLoss(temperature)(*ours_inputs)
    reference = ContrastiveLoss(temperature=temperature)(*monai_inputs)
    ours.backward()
    reference.backward()

    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
    for mine, theirs in zip(ours_inputs, monai_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch,temperature", [(1, 0.5), (3, 0.5), (6, 0.5), (4, 0.2)])
def test_aligned_orthogonal_items_give_the_closed_form(batch, temperature):
    # Each anchor: similarity 1 to its positive, 0 to its 2B - 2 negatives, and its self-similarity excluded.
    z = torch.eye(8)[:batch]
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + (2 * batch - 2)))
    assert NTXentLoss(temperature)(z, z.clone()).item() == pytest.approx(expected, abs=1e-6)


def test_scale_invariant_symmetric_and_lower_for_aligned_pairs():
    loss = NTXentLoss()
    z1, z2 = _views(8, 16)
    base = loss(z1, z2)
    assert loss(7 * z1, 7 * z2).item() == pytest.approx(base.item(), abs=1e-6)
    assert loss(z2, z1).item() == pytest.approx(base.item(), abs=1e-6)
    shuffled = loss(z1, z2.roll(1, dims=0))  # every positive is now another item's view
    assert base.item() < shuffled.item() - 0.5


def test_float32_under_bfloat16_autocast():
    z1, z2 = _views(16, 32)
    # MONAI's loss outside autocast is the float32 reference (ours outside autocast could share a precision bug).
    reference = ContrastiveLoss(temperature=0.5)(z1, z2)
    z1_bf16, z2_bf16 = z1.bfloat16(), z2.bfloat16()
    reference_from_bf16 = ContrastiveLoss(temperature=0.5)(z1_bf16.float(), z2_bf16.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = NTXentLoss()(z1, z2)
        # Projections that come out of a layer under autocast are bf16; the loss must still be float32.
        from_bf16 = NTXentLoss()(z1_bf16, z2_bf16)
    assert under_autocast.dtype == torch.float32 and from_bf16.dtype == torch.float32
    # A bf16 similarity matmul is off by ~2e-4 here; float32 agrees to rounding.
    assert under_autocast.item() == pytest.approx(reference.item(), abs=1e-5)
    assert from_bf16.item() == pytest.approx(reference_from_bf16.item(), abs=1e-5)


@pytest.mark.parametrize("z1,z2,expected", [
    (torch.randn(4, 8), torch.randn(5, 8), "same (B, D) shape"),
    (torch.randn(4, 8), torch.randn(4, 6), "same (B, D) shape"),
    (torch.randn(8), torch.randn(8), "2-D (B, D)"),
    (torch.randn(2, 4, 8), torch.randn(2, 4, 8), "2-D (B, D)"),
    (torch.randn(0, 8), torch.randn(0, 8), "B >= 1"),
    (torch.randn(4, 0), torch.randn(4, 0), "D >= 1"),
])
def test_bad_inputs_say_what_was_expected(z1, z2, expected):
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        NTXentLoss()(z1, z2)


@pytest.mark.parametrize("temperature", [0, -0.5, float("inf"), float("nan")])
def test_bad_temperature_is_named(temperature):
    with pytest.raises(InputError, match="temperature") as caught:
        NTXentLoss(temperature)
    assert caught.value.source == "temperature"


def test_two_ranks_give_the_global_batch_loss_and_gradients(tmp_path):
    run_ranks(WORKER, tmp_path, [tmp_path])  # file store, no port; all ranks stopped past its timeout
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    world, ranks = results["world_size"], results["ranks"]
    assert world == 2

    x1, x2 = results["x1"].clone().requires_grad_(True), results["x2"].clone().requires_grad_(True)
    single_process = NTXentLoss()(x1, x2)
    single_process.backward()
    assert single_process.item() == pytest.approx(ContrastiveLoss(temperature=0.5)(x1, x2).item(), abs=1e-5)

    # Every rank reports the loss of the whole global batch (not just its own anchors).
    for rank in ranks:
        assert rank["loss"].item() == pytest.approx(single_process.item(), abs=1e-5)

    # Each rank's inputs receive the gradients of *all* ranks' anchors through the gather's backward: exactly
    # world_size times the single-process gradient, which DDP's averaging over world_size then cancels.
    local_grad_z1 = torch.cat([rank["grad_z1"] for rank in ranks])
    local_grad_z2 = torch.cat([rank["grad_z2"] for rank in ranks])
    torch.testing.assert_close(local_grad_z1, world * x1.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(local_grad_z2, world * x2.grad, atol=1e-6, rtol=1e-5)

    # The training situation end to end: DDP-averaged parameter gradients equal the single-process ones.
    _, _, projection = _load_worker().make_global_inputs()
    model_loss = NTXentLoss()(projection(results["x1"]), projection(results["x2"]))
    model_loss.backward()
    for rank in ranks:
        assert rank["model_loss"].item() == pytest.approx(model_loss.item(), abs=1e-5)
        torch.testing.assert_close(rank["grad_weight"], projection.weight.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(rank["grad_bias"], projection.bias.grad, atol=1e-6, rtol=1e-5)
