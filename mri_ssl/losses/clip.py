"""Symmetric CLIP (InfoNCE) loss between video and text embeddings, with a learnable, clamped logit scale.

For N (video, report) pairs with L2-normalised embeddings v_i, t_j and logit scale s = exp(log_s):

    S_ij = s * cos(v_i, t_j)
    loss = ( CE(S, I) + CE(S^T, I) ) / 2,     CE = mean over rows of -log softmax(row)[true column],

i.e. each video must pick its report among all N reports (video-to-text) and each report its video (text-to-video),
as in CLIP (Radford et al. 2021) and the CMRformer paper. The scale is stored as its log, initialised at
log(1 / 0.07) and clamped to at most 100 (temperature >= 0.01): in the forward pass, and on the parameter itself
after every optimiser step once ``clamp_after_steps(optimizer)`` is attached, so Adam momentum cannot drift it above
the bound where its gradient would be zero. It must not be weight-decayed:
``mri_ssl.engines.schedules.weight_decay_groups`` builds the optimiser parameter groups that leave it (and norms and
biases) out.

Under torch.distributed with world size W each rank holds B pairs; the other ranks' embeddings are gathered with
``mri_ssl.distributed.all_gather_with_grad`` and serve as extra negatives, the same scheme as
``mri_ssl.losses.ntxent`` (see there why the gradients under DistributedDataParallel come out right without
rescaling). The value returned is the global loss over all N = B * W pairs, the same on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mri_ssl.distributed import all_gather_with_grad, mean_over_ranks, rank, world_size
from mri_ssl.errors import InputError

INITIAL_LOGIT_SCALE = 1.0 / 0.07
MAX_LOGIT_SCALE = 100.0


class CLIPLoss(nn.Module):
    """Symmetric cross-entropy over scaled cosine similarities of paired video and text embeddings.

    Args:
        initial_scale: starting logit scale (1 / temperature), 1 / 0.07 as in CLIP.
        max_scale: upper bound of the logit scale, 100 as in CLIP.
        learnable_scale: learn the scale (stored as ``log_logit_scale``); False keeps it a fixed buffer.
        gather_distributed: use the other ranks' embeddings as negatives when torch.distributed runs with world
            size > 1 (every rank must then pass the same batch size).
    """

    def __init__(self, initial_scale: float = INITIAL_LOGIT_SCALE, max_scale: float = MAX_LOGIT_SCALE,
                 learnable_scale: bool = True, gather_distributed: bool = True):
        super().__init__()
        for name, value in (("initial_scale", initial_scale), ("max_scale", max_scale)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InputError(name, f"expected a finite number > 0, got {value!r}")
        if initial_scale > max_scale:
            raise InputError("initial_scale", f"{initial_scale} exceeds max_scale {max_scale}")
        self.max_log_scale = math.log(max_scale)
        log_scale = torch.tensor(math.log(initial_scale), dtype=torch.float32)
        if learnable_scale:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.gather_distributed = gather_distributed

    @property
    def logit_scale(self) -> torch.Tensor:
        """The scale s = exp(log_s) actually applied, clamped to at most ``max_scale`` (differentiable below it)."""
        return self.log_logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored log-scale in place to at most log(max_scale)."""
        self.log_logit_scale.clamp_(max=self.max_log_scale)

    def clamp_after_steps(self, optimizer: torch.optim.Optimizer):
        """Clamp the scale after every ``optimizer.step()``; returns the hook handle (``.remove()`` to detach)."""
        return optimizer.register_step_post_hook(lambda *_: self.clamp_())

    def similarity(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(Nv, Nt) scaled cosine similarities s * cos(video_i, text_j), no gathering."""
        return self.logit_scale * F.normalize(video.float(), dim=1) @ F.normalize(text.float(), dim=1).T

    def forward(self, video: torch.Tensor, text: torch.Tensor, gather: bool | None = None) -> torch.Tensor:
        """Loss for B pairs: ``video`` (B, D) and ``text`` (B, D), row i of each being the same study.

        ``gather`` overrides ``gather_distributed`` for this call: False computes the loss of these B pairs alone,
        with no collective (validation, where every rank scores the same pairs).

        Returns:
            () float32 loss over all B * world_size pairs (B pairs when not gathering), the same on every rank.
        """
        _check_pairs(video, text)
        batch = video.shape[0]
        gather = (self.gather_distributed if gather is None else bool(gather)) and world_size() > 1
        # Low-precision logits lose the small similarity differences the softmax feeds on: keep float32.
        with torch.autocast(device_type=video.device.type, enabled=False):
            v = F.normalize(video.float(), dim=1)
            t = F.normalize(text.float(), dim=1)
            all_v, all_t = (all_gather_with_grad(v), all_gather_with_grad(t)) if gather else (v, t)
            offset = rank() * batch if gather else 0
            target = torch.arange(batch, device=v.device) + offset  # global index of each local pair
            scale = self.logit_scale
            video_to_text = F.cross_entropy(scale * v @ all_t.T, target)  # each local video against all reports
            text_to_video = F.cross_entropy(scale * t @ all_v.T, target)  # each local report against all videos
            local_loss = (video_to_text + text_to_video) / 2
        if not gather:
            return local_loss
        # Backpropagate this rank's loss; report the global mean (detached correction carries no gradient).
        return local_loss + (mean_over_ranks(local_loss) - local_loss.detach())


def _check_pairs(video: torch.Tensor, text: torch.Tensor) -> None:
    """Raise InputError unless video and text are both (B, D) with the same B >= 1 and D >= 1, and finite."""
    for name, z in (("video", video), ("text", text)):
        if not isinstance(z, torch.Tensor) or z.ndim != 2:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InputError(name, f"expected a 2-D (B, D) tensor of embeddings, got {shape}")
        if z.shape[0] < 1 or z.shape[1] < 1:
            raise InputError(name, f"expected at least one pair and one feature, got {tuple(z.shape)}")
    if video.shape != text.shape:
        raise InputError("video/text", f"expected the same (B, D) shape for video and text embeddings, got "
                                       f"{tuple(video.shape)} and {tuple(text.shape)}")
