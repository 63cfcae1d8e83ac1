"""SimSiam pretraining as an ignite/MONAI trainer: two views per image made on the device, symmetric negative cosine
with stop-gradient, the original optimiser recipe, and a collapse watch.

Recipe (Chen and He, CVPR 2021): SGD, momentum 0.9, weight decay 1e-4, ``lr = base_lr x batch / 256`` with base_lr
0.05, cosine decay over the epochs for the encoder and projector, and the predictor at the fixed initial lr
(``simsiam_parameter_groups`` + ``simsiam_lr_lambdas``).

Collapse indicator: the standard deviation over the batch of the L2-normalised projections ``z / |z|``, averaged
over dimensions. Unit vectors spread over the sphere give ``1 / sqrt(dim)``; a collapsed encoder (every output the
same) gives 0. It is logged every epoch, and a warning is printed when it falls below half of ``1 / sqrt(dim)``.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Sequence

import torch
from ignite.engine import Engine

from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer, projection_std
from mri_ssl.errors import InputError

logger = logging.getLogger(__name__)

SIMSIAM_BASE_LR = 0.05
SIMSIAM_REFERENCE_BATCH = 256


def simsiam_learning_rate(batch_size: int, base_lr: float = SIMSIAM_BASE_LR) -> float:
    """The linear scaling rule: ``base_lr x batch_size / 256``."""
    if int(batch_size) < 2:
        raise InputError("batch_size", f"SimSiam needs batches of at least 2 (batch norm), got {batch_size}")
    return float(base_lr) * int(batch_size) / SIMSIAM_REFERENCE_BATCH


def simsiam_parameter_groups(model: torch.nn.Module) -> list[dict]:
    """Two optimiser groups: encoder + projector (cosine-decayed), predictor (fixed lr); unwraps DDP."""
    model = getattr(model, "module", model)
    predictor = list(model.predictor.parameters())
    predictor_ids = {id(p) for p in predictor}
    others = [p for p in model.parameters() if id(p) not in predictor_ids]
    return [{"params": others, "name": "encoder_projector"}, {"params": predictor, "name": "predictor"}]


SIMSIAM_OPTIMIZERS = ("sgd", "adamw")


def simsiam_optimizer(model: torch.nn.Module, name: str = "sgd", lr: float = SIMSIAM_BASE_LR, momentum: float = 0.9,
                      weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """The optimiser over ``simsiam_parameter_groups(model)``: ``sgd`` (the paper's: SGD with ``momentum``) or
    ``adamw`` (the slim CPU recipe's: a small ViT trained for a few hundred steps learns with AdamW at lr 1e-3 where
    SGD at the linear-scaling lr barely moves; see the bundle's README for the measurements)."""
    name = str(name).lower()
    groups = simsiam_parameter_groups(model)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise InputError("pretrain_optimizer", f"expected one of {SIMSIAM_OPTIMIZERS}, got {name!r}")


def simsiam_lr_lambdas(num_epochs: int, warmup_epochs: int = 0) -> list[Callable[[int], float]]:
    """``LambdaLR`` factors per group of ``simsiam_parameter_groups``: half-cosine to 0, and constant 1; with
    ``warmup_epochs`` both first rise linearly, ``(epoch + 1) / warmup_epochs`` (0: the paper's recipe, no warm-up)."""
    epochs = max(1, int(num_epochs))
    warmup = max(0, int(warmup_epochs))

    def ramp(epoch: int) -> float:
        return min(1.0, (epoch + 1) / warmup) if warmup else 1.0

    def cosine(epoch: int) -> float:
        return ramp(epoch) * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

    def constant(epoch: int) -> float:
        return ramp(epoch)

    return [cosine, constant]


class SimSiamTrainer(ContrastiveTrainer):
    """``ContrastiveTrainer`` with SimSiam's forward and loss; the rest (device-side views, per-epoch seeding,
    non-finite-loss stop, AMP, checkpoint compatibility) is shared.

    Args:
        device, max_epochs, train_data_loader, optimizer, epoch_length, train_handlers, seed, amp: as
            ``ContrastiveTrainer``.
        network: a ``SimSiamModel`` (or DDP-wrapped): returns ``projection`` and ``prediction``.
        view_pair: ``SimSiamViewPair``: ``(B, C, H, W) -> {"view1", "view2"}``.
        loss: ``SimSiamLoss``: ``(p1, p2, z1, z2) -> loss``.
        input_keys: batch keys stacked as input channels (``("image",)``).
        collapse_warning_fraction: warn when the collapse indicator falls below this fraction of
            ``1 / sqrt(dim)`` (0.5).
    """

    def __init__(self, device, max_epochs: int, train_data_loader: Iterable, network: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, view_pair: Callable, loss: Callable,
                 input_keys: Sequence[str] = ("image",), grad_clip_norm: float | None = None, amp: bool = False,
                 epoch_length: int | None = None, train_handlers: Sequence | None = None, seed: int | None = 0,
                 collapse_warning_fraction: float = 0.5):
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, view_pair=view_pair, contrastive_loss=loss, input_keys=input_keys,
                         reconstruction_weight=0.0, grad_clip_norm=grad_clip_norm, amp=amp,
                         epoch_length=epoch_length, train_handlers=train_handlers, seed=seed)
        self.collapse_warning_fraction = float(collapse_warning_fraction)
        self.collapse_warnings = 0

    def compute_losses(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        pair = self.view_pair(inputs)
        batch_size = pair["view1"].shape[0]
        if batch_size < 2:
            raise InputError("batch_size", "SimSiam needs at least 2 items per batch (batch norm in the heads); "
                                           "use drop_last=True or a larger batch")
        views = torch.cat([pair["view1"], pair["view2"]], dim=0)
        with torch.autocast(torch.device(self.state.device).type, enabled=self.amp):
            output = self.network(views)
        z, p = output["projection"], output["prediction"]
        loss = self.contrastive_loss(p[:batch_size], p[batch_size:], z[:batch_size], z[batch_size:])
        return {"loss": loss, "contrastive": loss, "projection": z}

    def _log_epoch(self, engine: Engine) -> None:
        if not self.epoch_projection_std:
            return
        value = sum(self.epoch_projection_std) / len(self.epoch_projection_std)
        dim = getattr(getattr(self.network, "module", self.network).projector, "out_features", None)
        engine.state.metrics["projection_std"] = value
        if not dim:
            logger.info("epoch %d: collapse indicator (std of normalised z) %.4f", engine.state.epoch, value)
            return
        healthy = 1.0 / math.sqrt(dim)
        engine.state.metrics["projection_std_ratio"] = value / healthy
        logger.info("epoch %d: collapse indicator (std of normalised z) %.4f, healthy near 1/sqrt(%d) = %.4f",
                    engine.state.epoch, value, dim, healthy)
        if value < self.collapse_warning_fraction * healthy:
            self.collapse_warnings += 1
            logger.warning("epoch %d: SimSiam may be collapsing: std of normalised projections %.4f is below %.2f x "
                           "1/sqrt(%d) = %.4f (check the stop-gradient, the predictor lr and the augmentations)",
                           engine.state.epoch, value, self.collapse_warning_fraction, dim,
                           self.collapse_warning_fraction * healthy)


__all__ = ["SimSiamTrainer", "projection_std", "simsiam_learning_rate", "simsiam_lr_lambdas", "simsiam_optimizer",
           "simsiam_parameter_groups"]
