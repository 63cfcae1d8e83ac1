"""Gradient-norm clipping: a handler for MONAI's SupervisedTrainer, which has no clipping option of its own, and
``backward_and_step`` for the custom trainers' iterations."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from mri_ssl.errors import InputError


class GradientClipping:
    """Clip the global gradient norm to ``max_norm`` between the backward pass and the optimizer step.

    The paper trains every network with AdamW and gradient clipping at 12.0. ``SupervisedTrainer`` fires
    ``IterationEvents.BACKWARD_COMPLETED`` right before ``optimizer.step()``; this handler clips there. Under AMP the
    gradients are scaled, so they are unscaled first (the scaler then skips its own unscale for this step).
    """

    def __init__(self, max_norm: float = 12.0):
        if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
            raise InputError("grad_clip_norm", f"must be a positive number, got {max_norm!r}")
        self.max_norm = float(max_norm)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        parameters = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if parameters:
            engine.state.grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, self.max_norm))


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters, max_norm: float | None,
                      scaler=None) -> None:
    """Backward pass, optional gradient-norm clipping to ``max_norm`` (None or 0: none) and the optimizer step, through
    ``scaler`` (a ``GradScaler``, for AMP) when given. Under AMP the gradients are unscaled before clipping."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if max_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if max_norm:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        optimizer.step()
