"""CLIP loss: the reference formula, the clamped learnable logit scale, weight-decay groups, and two ranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.engines.schedules import no_decay_names, weight_decay_groups
from mri_ssl.losses import CLIPLoss
from rank_processes import run_ranks

WORKER = Path(__file__).with_name("distributed_clip_worker.py")


def reference_clip_loss(video, text, scale):
    """Written out by hand: log-softmax of the scaled cosine matrix, both directions, diagonal targets."""
    v = video / video.norm(dim=1, keepdim=True)
    t = text / text.norm(dim=1, keepdim=True)
    s = scale * v @ t.T
    v2t = -(s.diagonal() - torch.logsumexp(s, dim=1)).mean()
    t2v = -(s.diagonal() - torch.logsumexp(s, dim=0)).mean()
    return (v2t + t2v) / 2


def test_initial_scale_is_one_over_007_stored_as_log():
    loss = CLIPLoss()
    assert loss.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert loss.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert isinstance(loss.log_logit_scale, nn.Parameter)


def test_equals_reference_formula():
    g = torch.Generator().manual_seed(1)
    video, text = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    loss = CLIPLoss()(video, text)
    assert loss.item() == pytest.approx(reference_clip_loss(video, text, 1 / 0.07).item(), rel=1e-5)


def test_closed_form_orthonormal_pairs():
    # Identical one-hot pairs: S = s * I, so each row's loss is -log(e^s / (e^s + (N-1))) in both directions.
    n, scale = 4, 1 / 0.07
    eye = torch.eye(n)
    expected = -math.log(math.exp(scale) / (math.exp(scale) + n - 1))
    assert CLIPLoss()(eye, eye).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # Asymmetric matrix: both directions differ, the loss is their mean (not just one of them).
    video = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert CLIPLoss(initial_scale=2.0)(video, text).item() == pytest.approx(
        reference_clip_loss(video, text, 2.0).item(), rel=1e-6)


def test_loss_is_invariant_to_embedding_norms():
    g = torch.Generator().manual_seed(2)
    video, text = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    loss = CLIPLoss()
    torch.testing.assert_close(loss(video, text), loss(3.0 * video, 0.5 * text))


def test_scale_stays_clamped_after_step_that_pushes_it_up():
    # Every true pair is its row's and column's best match: the loss falls as the scale grows, so gradient descent
    # pushes the scale up (a 0.5 step in log from 90 would reach 148 unclamped).
    loss_fn = CLIPLoss(initial_scale=90.0)
    optimiser = torch.optim.Adam(loss_fn.parameters(), lr=0.5)
    loss_fn.clamp_after_steps(optimiser)
    video, text = torch.eye(3), torch.eye(3) + 5.0  # cosine 0.65 on, 0.54 off the diagonal
    for step in range(3):
        optimiser.zero_grad()
        loss_fn(video, text).backward()
        if step == 0:
            assert loss_fn.log_logit_scale.grad.item() < 0  # descent direction raises the scale
        optimiser.step()
        assert loss_fn.log_logit_scale.item() <= math.log(100.0) + 1e-6
        assert loss_fn.logit_scale.item() == pytest.approx(100.0, rel=1e-5)


def test_forward_scale_is_clamped_even_without_hook():
    loss_fn = CLIPLoss()
    with torch.no_grad():
        loss_fn.log_logit_scale.fill_(math.log(1000.0))
    assert loss_fn.logit_scale.item() == pytest.approx(100.0, rel=1e-5)
    eye = torch.eye(3)
    assert loss_fn(eye, eye).item() == pytest.approx(reference_clip_loss(eye, eye, 100.0).item(), rel=1e-5)
    loss_fn.clamp_()
    assert loss_fn.log_logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)


def test_fixed_scale_is_not_a_parameter():
    loss_fn = CLIPLoss(initial_scale=10.0, learnable_scale=False)
    assert list(loss_fn.parameters()) == []
    assert loss_fn.logit_scale.item() == pytest.approx(10.0, rel=1e-6)


class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.conv = nn.Conv2d(1, 2, 3)
        self.clip = CLIPLoss()
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_weight_decay_groups_exclude_scale_norms_biases():
    model = _TinyModel()
    decayed, exempt = weight_decay_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.linear.weight), id(model.conv.weight)}
    assert sorted(no_decay_names(model)) == sorted(
        ["linear.bias", "norm.weight", "norm.bias", "conv.bias", "clip.log_logit_scale"])
    # AdamW with these groups leaves the scale untouched by decay when its gradient is zero.
    optimiser = torch.optim.AdamW(weight_decay_groups(model, 0.5), lr=0.1)
    before = model.clip.log_logit_scale.item()
    weight_before = model.linear.weight.detach().clone()
    model.linear.weight.grad = torch.zeros_like(model.linear.weight)
    model.clip.log_logit_scale.grad = torch.zeros(())
    optimiser.step()
    assert model.clip.log_logit_scale.item() == before
    # Decoupled decay with a zero gradient: w <- w * (1 - lr * wd) = 0.95 w.
    torch.testing.assert_close(model.linear.weight.detach(), 0.95 * weight_before)


@pytest.mark.parametrize("video,text,name", [
    (torch.zeros(3), torch.zeros(3, 2), "video"),
    (torch.zeros(3, 2), torch.zeros(4, 2), "video/text"),
    (torch.zeros(0, 2), torch.zeros(0, 2), "video"),
])
def test_bad_shapes_are_named(video, text, name):
    with pytest.raises(InputError) as caught:
        CLIPLoss()(video, text)
    assert caught.value.source == name


def test_bad_scale_settings_are_named():
    with pytest.raises(InputError, match="max_scale"):
        CLIPLoss(max_scale=0)
    with pytest.raises(InputError, match="initial_scale"):
        CLIPLoss(initial_scale=200.0, max_scale=100.0)


def test_two_ranks_give_the_global_batch_loss_and_gradients(tmp_path):
    run_ranks(WORKER, tmp_path, [tmp_path])  # file store, no port; all ranks stopped past its timeout
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    world, ranks = results["world_size"], results["ranks"]
    video = results["video"].clone().requires_grad_(True)
    text = results["text"].clone().requires_grad_(True)
    single = CLIPLoss()
    single_loss = single(video, text)
    single_loss.backward()
    for rank in ranks:
        assert rank["loss"].item() == pytest.approx(single_loss.item(), abs=1e-5)
    # The gather's backward sums all ranks' gradients: world times the single-process one, which DDP's averaging
    # cancels; the scale's gradient, averaged over ranks by DDP, equals the single-process one.
    torch.testing.assert_close(torch.cat([r["grad_video"] for r in ranks]), world * video.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["grad_text"] for r in ranks]), world * text.grad, atol=1e-6, rtol=1e-5)
    mean_scale_grad = sum(r["grad_log_scale"] for r in ranks) / world
    torch.testing.assert_close(mean_scale_grad, single.log_logit_scale.grad, atol=1e-6, rtol=1e-5)
