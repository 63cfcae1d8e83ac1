"""SGD parameter groups and the warm-up + cosine learning-rate schedule of CAMContrast's pretraining."""

from __future__ import annotations

import math

from torch import nn

from mri_ssl.errors import InputError


def decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of convolutions / linear layers with ``weight_decay``; norms' parameters and all biases
    (every parameter of fewer than 2 dimensions) without, as is usual for SGD with weight decay."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


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
