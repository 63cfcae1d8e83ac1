"""Stop training at the first non-finite loss, before the weights (and so any checkpoint) are touched.

After a NaN loss MONAI's SupervisedTrainer still runs backward and ``optimizer.step()``, so every later checkpoint
(``final`` included) holds NaN weights. ``NonFiniteLossGuard`` listens to ``IterationEvents.LOSS_COMPLETED``, which
``SupervisedTrainer`` fires after the loss and before ``backward()``, and raises ``NonFiniteLossError`` naming the
epoch and iteration. The error leaves ignite's run loop before ``EPOCH_COMPLETED`` / ``COMPLETED``, so
``AtomicCheckpointer`` writes nothing more: latest, best and final stay what they were. ``ContrastiveTrainer`` does
the same check inside its own iteration.
"""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or Inf; training stops before the weights are touched."""

    def __init__(self, loss: float, epoch: int, iteration: int):
        self.loss, self.epoch, self.iteration = float(loss), int(epoch), int(iteration)
        super().__init__(f"non-finite loss {self.loss} at epoch {self.epoch}, iteration {self.iteration}; training "
                         f"stopped before the weights were updated, and the checkpoints on disk (latest, best, final) "
                         f"hold the last finite weights. Lower the learning rate, check the data "
                         f"(`mri-ssl check-data`) or resume from latest.pt")


def check_loss(loss, engine: Engine) -> None:
    """Raise ``NonFiniteLossError`` when ``loss`` (a tensor or number) is NaN or Inf."""
    value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(value, engine.state.epoch, engine.state.iteration)


class NonFiniteLossGuard:
    """Attach to a MONAI ``SupervisedTrainer``: a NaN / Inf loss raises ``NonFiniteLossError`` before backward."""

    def __init__(self, loss_key: str = CommonKeys.LOSS):
        self.loss_key = loss_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        check_loss(engine.state.output[self.loss_key], engine)


class NonFiniteWeightsError(RuntimeError):
    """Raised instead of writing a checkpoint whose weights hold NaN or Inf (the file on disk is kept)."""


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or Inf."""
    return [name for name, tensor in state.items() if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())]
