"""Optimiser parameter groups with and without weight decay (CAMContrast's SGD, the video-text AdamW) and the
warm-up + cosine learning-rate schedule of CAMContrast's pretraining."""

from __future__ import annotations

import math

from torch import nn

from mri_ssl.errors import InputError


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups: weight decay on weight matrices/kernels, none on scales, norms and biases.

    A parameter is exempt when it has fewer than 2 dimensions (biases, LayerNorm/BatchNorm weights, the scalar
    ``log_logit_scale``, positional scalars) or its name contains ``logit_scale``. Frozen parameters are skipped.

    Returns:
        ``[{"params": decayed, "weight_decay": wd}, {"params": exempt, "weight_decay": 0.0}]``, each parameter once.
    """
    if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise InputError("weight_decay", f"expected a finite number >= 0, got {weight_decay!r}")
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (exempt if parameter.ndim < 2 or "logit_scale" in name else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": float(weight_decay)}, {"params": exempt, "weight_decay": 0.0}]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters ``weight_decay_groups`` exempts from weight decay (for logs and tests)."""
    exempt = {id(p) for p in weight_decay_groups(model, 0.0)[1]["params"]}
    return [name for name, p in model.named_parameters() if id(p) in exempt]


class WarmupCosine:
    """LR multiplier at optimizer step s: linear from 1/W to 1 over the first W = round(warmup_fraction * total)
    steps, then ``0.5 * (1 + cos(pi * progress))`` down to 0 at ``total_steps``. A picklable callable for LambdaLR
    (stepped every iteration), so its state is saved in checkpoints."""

    def __init__(self, total_steps: int, warmup_fraction: float = 0.3):
        if int(total_steps) < 1:
            raise InputError("total_steps", f"must be at least 1, got {total_steps}")
        if not 0.0 <= float(warmup_fraction) < 1.0:
            raise InputError("warmup_fraction", f"must be in [0, 1), got {warmup_fraction}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(round(float(warmup_fraction) * self.total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
