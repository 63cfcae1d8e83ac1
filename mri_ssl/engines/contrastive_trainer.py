"""Two-view contrastive pretraining with a reconstruction branch, as an ignite/MONAI trainer.

The iteration receives the collated qMRI maps (or real images) and builds the two views *on the training device*
(simulation and augmentation after collation), so the same code feeds a GPU without CPU-worker starvation.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines import Trainer
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys

from mri_ssl.distributed import rank
from mri_ssl.engines.clipping import backward_and_step
from mri_ssl.engines.guards import NonFiniteLossError, check_loss  # noqa: F401 (NonFiniteLossError re-exported)
from mri_ssl.errors import InputError
from mri_ssl.metrics.representation_probe import projection_spread

logger = logging.getLogger(__name__)

LOSS_TERMS = ("contrastive", "reconstruction")  # the terms of the total loss, logged beside it


def stack_inputs(batch: dict, keys: Sequence[str], device: torch.device) -> torch.Tensor:
    """Concatenate the channel-first tensors ``batch[k]`` (each ``(B, 1, *spatial)``) into ``(B, C, *spatial)``."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise InputError("batch", f"missing keys {missing}; the datalist must provide {list(keys)}")
    parts = [torch.as_tensor(batch[k]).to(device=device, dtype=torch.float32, non_blocking=True) for k in keys]
    return torch.cat(parts, dim=1)


def projection_std(projection: torch.Tensor) -> float:
    """Collapse indicator of a training batch: ``mri_ssl.metrics.representation_probe.projection_spread``."""
    return projection_spread(projection)


class ContrastiveTrainer(Trainer):
    """Trainer for NT-Xent (+ L1 reconstruction) pretraining on view pairs made inside the iteration.

    Args:
        device: training device.
        max_epochs: epochs to train.
        train_data_loader: yields dicts of channel-first tensors under ``input_keys``.
        network: a ``ContrastiveReconstructionModel`` (or DDP-wrapped one): returns ``projection`` and optionally
            ``reconstruction``.
        optimizer: e.g. AdamW.
        view_pair: callable ``(B, C, *spatial) -> {"view1", "view2", "target1", "target2", ...}``
            (``ContrastiveViewPair``).
        contrastive_loss: ``(z1, z2) -> loss`` (``NTXentLoss``).
        input_keys: batch keys stacked as input channels, e.g. ``("pd", "r1", "r2s", "mt")`` or ``("image",)``.
        reconstruction_weight: weight of the L1 reconstruction loss on both views; 0 disables it.
        grad_clip_norm: gradient-norm clipping (paper: 12); None disables.
        amp: mixed precision (used on CUDA only; the contrastive loss is computed in float32 regardless).
        epoch_length, train_handlers: as MONAI's trainers.
        inferer: how the network is run on the stacked views (MONAI ``Inferer``; default ``SimpleInferer``, i.e.
            ``network(views)``), the bundle's ``train#inferer`` property.
        seed: if given, every epoch starts from ``seed + epoch`` for torch's RNG (dropout, shuffling), the view pair
            and the loader's random transforms, so a run resumed from a checkpoint reproduces an uninterrupted one
            without pickling RNG states (exactly so with ``num_workers=0``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        view_pair: Callable,
        contrastive_loss: Callable,
        input_keys: Sequence[str] = ("pd", "r1", "r2s", "mt"),
        reconstruction_weight: float = 1.0,
        grad_clip_norm: float | None = 12.0,
        amp: bool = False,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        seed: int | None = 0,
        inferer: Callable | None = None,
    ) -> None:
        if not (reconstruction_weight >= 0 and math.isfinite(reconstruction_weight)):
            raise InputError("reconstruction_weight", f"must be a finite number >= 0, got {reconstruction_weight}")
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise InputError("grad_clip_norm", f"must be > 0 or None, got {grad_clip_norm}")
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            handlers=train_handlers,
            amp=bool(amp) and device.type == "cuda",
            decollate=False,
        )
        self.network = network
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.optimizer = optimizer
        self.view_pair = view_pair
        self.contrastive_loss = contrastive_loss
        self.input_keys = tuple(input_keys)
        self.reconstruction_weight = float(reconstruction_weight)
        self.grad_clip_norm = grad_clip_norm
        self.seed = seed
        self.epoch_projection_std: list[float] = []
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)

    def _start_epoch(self, engine: Engine) -> None:
        self.epoch_projection_std = []
        if self.seed is None:
            return
        # Every source of randomness restarts from (seed, epoch): torch (dropout, shuffling), the view pair and the
        # loader's random transforms. Re-creating the data iterator here makes the shuffle order depend on the
        # epoch only, so a run resumed at epoch k sees exactly what an uninterrupted run sees from epoch k + 1.
        # Ranks of a distributed run draw different augmentations from the same seed.
        epoch_seed = int(self.seed) + int(engine.state.epoch) + 100_003 * rank()
        torch.manual_seed(epoch_seed)
        if hasattr(self.view_pair, "set_random_state"):
            self.view_pair.set_random_state(seed=epoch_seed)
        loader = engine.state.dataloader
        transform = getattr(getattr(loader, "dataset", None), "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=epoch_seed)
        engine.set_data(loader)

    def _log_epoch(self, engine: Engine) -> None:
        if self.epoch_projection_std:
            value = sum(self.epoch_projection_std) / len(self.epoch_projection_std)
            dim = getattr(getattr(self.network, "module", self.network).projector[-1], "out_features", None)
            healthy = f" (healthy near 1/sqrt({dim}) = {1 / math.sqrt(dim):.3f})" if dim else ""
            logger.info("epoch %d: projection std %.4f%s", engine.state.epoch, value, healthy)

    def compute_losses(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views, forward pass and losses for one batch of inputs ``(B, C, *spatial)`` on the device."""
        pair = self.view_pair(inputs)
        batch_size = pair["view1"].shape[0]
        if batch_size < 2:
            raise InputError("batch_size", "contrastive learning needs at least 2 items per batch (each item's "
                                           "negatives are the others); use drop_last=True or a larger batch")
        views = torch.cat([pair["view1"], pair["view2"]], dim=0)
        with torch.autocast(torch.device(self.state.device).type, enabled=self.amp):
            output = self.inferer(views, self.network)
        projection = output["projection"]
        contrastive = self.contrastive_loss(projection[:batch_size], projection[batch_size:])
        losses = {"contrastive": contrastive, "projection": projection}
        total = contrastive
        if self.reconstruction_weight > 0 and output.get("reconstruction") is not None:
            targets = torch.cat([pair["target1"], pair["target2"]], dim=0)
            reconstruction = F.l1_loss(output["reconstruction"].float(), targets)
            losses["reconstruction"] = reconstruction
            total = total + self.reconstruction_weight * reconstruction
        losses["loss"] = total
        return losses

    def prepare_inputs(self, batchdata: dict, device: torch.device):
        """What ``compute_losses`` receives for one batch: here the input channels stacked on the device.

        Subclasses whose views come from the loader (e.g. image / heatmap pairs) override this and
        ``compute_losses`` together and keep the rest of the iteration (non-finite check, AMP, clipping).
        """
        return stack_inputs(batchdata, self.input_keys, device)

    def _iteration(self, engine: Engine, batchdata: dict) -> dict:
        inputs = self.prepare_inputs(batchdata, engine.state.device)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.compute_losses(inputs)
        loss = losses["loss"]
        check_loss(loss, engine)  # stop before backward/step: the weights and the last checkpoint stay finite
        backward_and_step(loss, self.optimizer, self.network.parameters(), self.grad_clip_norm,
                          self.scaler if self.amp else None)
        self.epoch_projection_std.append(projection_std(losses["projection"]))
        # The epoch's running mean, kept current at every iteration: the train handlers (StatsHandler, TensorBoard)
        # run at EPOCH_COMPLETED before this trainer's own epoch-end log, and must not see last epoch's value.
        engine.state.metrics["projection_std"] = sum(self.epoch_projection_std) / len(self.epoch_projection_std)
        return {CommonKeys.LOSS: float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()
                                                          if k in LOSS_TERMS}}


def local_loss(loss: Callable) -> Callable:
    """A copy of ``loss`` that does not gather across ranks (``gather_distributed=False``), or ``loss`` itself when
    it has no such switch."""
    if getattr(loss, "gather_distributed", False):
        loss = copy.copy(loss)
        loss.gather_distributed = False
    return loss


class ValidationLoss:
    """At each epoch end, the mean pretraining loss on a fixed validation set, in ``engine.state.metrics``.

    The total goes to ``metric_name`` and each term beside it (``<metric_name>_contrastive``,
    ``<metric_name>_reconstruction``), so a curve shows which term moved.

    The reference code validated through freshly random augmentations, so its validation loss moved with the dice
    roll and no best checkpoint could be chosen. Here the view pair is re-seeded with ``seed`` before every
    validation pass, so every epoch is scored on exactly the same views.

    Under torch.distributed every rank scores the whole validation set with the unwrapped network and a loss that
    gathers nothing: no collectives (a rank that validates differently cannot leave another waiting), and the value
    equals the single-process one (gathering would count the other ranks' copies of the same items as negatives).
    """

    def __init__(self, data_loader: Iterable, view_pair: Callable, seed: int = 12345, metric_name: str = "val_loss",
                 interval: int = 1):
        self.data_loader = data_loader
        self.view_pair = view_pair
        self.seed = seed
        self.metric_name = metric_name
        self.interval = max(1, int(interval))

    def attach(self, trainer: ContrastiveTrainer) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def __call__(self, trainer: ContrastiveTrainer) -> None:
        network = trainer.network
        was_training = network.training
        network.eval()
        if hasattr(self.view_pair, "set_random_state"):
            self.view_pair.set_random_state(seed=self.seed)
        saved = trainer.view_pair, trainer.network, trainer.contrastive_loss
        trainer.view_pair = self.view_pair
        trainer.network = getattr(network, "module", network)  # DDP's forward would broadcast buffers
        trainer.contrastive_loss = local_loss(trainer.contrastive_loss)
        cpu_rng = torch.get_rng_state()
        try:
            totals, count = {}, 0
            for batch in self.data_loader:
                inputs = stack_inputs(batch, trainer.input_keys, trainer.state.device)
                if inputs.shape[0] < 2:
                    logger.warning("validation: skipping a batch of one item (NT-Xent needs negatives)")
                    continue
                losses = trainer.compute_losses(inputs)
                for term in ("loss", *LOSS_TERMS):
                    if term in losses:
                        totals[term] = totals.get(term, 0.0) + float(losses[term]) * inputs.shape[0]
                count += inputs.shape[0]
        finally:
            trainer.view_pair, trainer.network, trainer.contrastive_loss = saved
            torch.set_rng_state(cpu_rng)
            network.train(was_training)
        if count == 0:
            raise InputError("validation", "no validation batch of at least 2 items; the validation split needs "
                                           ">= 2 subjects (and a batch size >= 2)")
        value = totals["loss"] / count
        trainer.state.metrics[self.metric_name] = value
        terms = {f"{self.metric_name}_{term}": totals[term] / count for term in LOSS_TERMS if term in totals}
        trainer.state.metrics.update(terms)
        logger.info("epoch %d: %s %.5f%s", trainer.state.epoch, self.metric_name, value,
                    "".join(f", {name} {term:.5f}" for name, term in terms.items()))
