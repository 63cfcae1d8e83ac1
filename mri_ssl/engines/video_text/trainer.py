"""``VideoTextTrainer``: the ignite/MONAI trainer of the video-text model with the CLIP loss, and its optimizer.

AdamW over ``weight_decay_groups`` (no decay on the logit scale, norms, biases), the scale clamped after every step,
the CLIP loss on each batch (gathered across ranks under torch.distributed), the validation CLIP loss at every epoch
end in ``state.metrics["val_loss"]`` and the per-epoch history in ``history.json``.

Distributed runs: every rank must issue the same collectives in the same order, or one waits forever. Training
batches are equal per rank (``DistributedSampler(drop_last=True)`` + ``drop_last=True``; checked once at the start,
so a custom sampler that breaks this is an error, not a hang); validation runs on every rank over the whole
validation set with the *unwrapped* model and no gathering, so it has no collectives at all and gives the same value
as a single-process run; files are written by rank 0 only, with no collective inside.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines import Trainer
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys

from mri_ssl.distributed import is_main_process, rank, world_size
from mri_ssl.engines.clipping import backward_and_step
from mri_ssl.engines.guards import check_loss
from mri_ssl.engines.schedules import weight_decay_groups
from mri_ssl.engines.video_text.model import unwrap
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json
from mri_ssl.io.history import records_before

logger = logging.getLogger(__name__)


def video_text_optimizer(model: torch.nn.Module, learning_rate: float = 1e-4, weight_decay: float = 0.05):
    """AdamW with no decay on the logit scale, norms and biases; the scale is clamped after each step."""
    optimizer = torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=float(learning_rate))
    unwrap(model).loss.clamp_after_steps(optimizer)
    return optimizer


class VideoTextTrainer(Trainer):
    """Ignite/MONAI trainer of the video-text model with the CLIP loss (see the module docstring).

    Args:
        device, max_epochs: as MONAI's trainers.
        train_data_loader: yields ``{"video": (B, T, 1, H, W), "ids": (B, L), ...}`` (``CMRVideoTextDataset``).
        network: a ``VideoTextModel``, or a DistributedDataParallel-wrapped one.
        optimizer: from ``video_text_optimizer``.
        val_data_loader: the validation split; its CLIP loss (no gathering, batches of one pair skipped: their
            loss is 0 whatever the model) is ``state.metrics["val_loss"]`` at every epoch end. None: no validation.
        history_path: ``history.json`` (rank 0 writes it at every epoch end: epoch, train_loss, val_loss,
            logit_scale, and the world size); a resumed run keeps the records of the epochs it resumes after.
        grad_clip_norm: gradient-norm clipping; None or 0 disables.
        seed: every epoch restarts the loader shuffle (when the loader has a generator), the frame sampling of the
            dataset and torch's RNG from ``seed + epoch``, so a run resumed from ``latest.pt`` continues exactly as
            an uninterrupted one would (with ``num_workers=0``). None leaves the RNGs alone.
        inferer: runs ``network(video, ids)`` (``train#inferer``); default ``SimpleInferer``.
        train_handlers, amp, epoch_length: as MONAI's trainers (amp on CUDA only; the loss stays float32).
    """

    def __init__(self, device, max_epochs: int, train_data_loader, network, optimizer, val_data_loader=None,
                 history_path=None, grad_clip_norm: float | None = 1.0, seed: int | None = 0, inferer=None,
                 train_handlers=None, amp: bool = False, epoch_length: int | None = None):
        if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
            raise InputError("max_epochs", f"expected at least 1 epoch, got {max_epochs!r}")
        if grad_clip_norm is not None and not grad_clip_norm >= 0:
            raise InputError("grad_clip_norm", f"must be >= 0 or None, got {grad_clip_norm}")
        if len(train_data_loader) == 0:
            raise InputError("batch_size", f"the training split gives no full batch "
                                           f"({len(train_data_loader.dataset)} studies over {world_size()} "
                                           f"process(es)); lower batch_size")
        batch_size = getattr(train_data_loader, "batch_size", None)
        sampler = getattr(train_data_loader, "sampler", None)
        if (world_size() > 1 and batch_size and sampler is not None and not train_data_loader.drop_last
                and len(sampler) % batch_size):
            # the gathered CLIP loss needs the same batch size on every rank, the last one included
            raise InputError("train#dataloader", f"under torch.distributed the last batch would hold "
                                                 f"{len(sampler) % batch_size} of {batch_size} studies; set "
                                                 f"drop_last=True")
        device = torch.device(device)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         epoch_length=epoch_length, handlers=train_handlers, amp=bool(amp) and device.type == "cuda",
                         decollate=False)
        self.network, self.optimizer = network, optimizer
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.val_data_loader, self.grad_clip_norm, self.seed = val_data_loader, grad_clip_norm, seed
        self.history_path = Path(history_path) if history_path else None
        self.history: list[dict] = []
        self._epoch_losses: list[float] = []
        self.add_event_handler(Events.STARTED, self._check_equal_batches_per_rank)
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)

    def _check_equal_batches_per_rank(self, engine: Engine) -> None:
        # One rank with an extra batch would run one more forward/backward (gathers, DDP all-reduces) than the
        # others and wait in it forever: make that an error before the first batch.
        counts = batches_per_rank(engine.state.epoch_length, engine.state.device)
        if len(set(counts)) > 1:
            raise InputError("train#dataloader", f"ranks would run different numbers of batches per epoch "
                                                 f"{counts}; use DistributedSampler(drop_last=True) and "
                                                 f"drop_last=True")

    def _start_epoch(self, engine: Engine) -> None:
        if not self.history and engine.state.epoch > 1:
            self.history = records_before(self.history_path, "epoch", engine.state.epoch)
        self._epoch_losses = []
        if self.seed is None:
            return
        epoch_seed = int(self.seed) + int(engine.state.epoch)
        torch.manual_seed(epoch_seed + 100_003 * rank())  # dropout differs between ranks
        loader = engine.state.dataloader
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(epoch_seed)  # same shuffle whether resumed or not
        dataset = getattr(loader, "dataset", None)
        if isinstance(getattr(dataset, "rng", None), np.random.RandomState):
            dataset.rng.seed(epoch_seed + 100_003 * rank())  # frame sampling
        engine.set_data(loader)  # a fresh iterator draws its order from the generator just seeded

    def _iteration(self, engine: Engine, batchdata: dict) -> dict:
        video = batchdata["video"].to(engine.state.device, non_blocking=True)
        ids = batchdata["ids"].to(engine.state.device, non_blocking=True)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(engine.state.device.type, enabled=self.amp):
            out = self.inferer(video, self.network, ids)
        loss = unwrap(self.network).loss(out["video"], out["text"])  # float32 inside
        check_loss(loss, engine)  # the global loss: the same on every rank, so all stop together
        backward_and_step(loss, self.optimizer, self.network.parameters(), self.grad_clip_norm,
                          self.scaler if self.amp else None)
        self._epoch_losses.append(float(loss.detach()))
        return {CommonKeys.LOSS: float(loss.detach())}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean CLIP loss over the validation pairs, per batch without gathering: no collective on any rank."""
        model = unwrap(self.network)
        was_training = model.training
        model.eval()
        cpu_rng = torch.get_rng_state()
        total, count = 0.0, 0
        try:
            for batch in self.val_data_loader:
                if len(batch["ids"]) < 2:
                    logger.warning("validation: skipping a batch of one pair (its CLIP loss is 0 for any model)")
                    continue
                out = model(batch["video"].to(self.state.device), batch["ids"].to(self.state.device))
                total += float(model.loss(out["video"], out["text"], gather=False)) * len(batch["ids"])
                count += len(batch["ids"])
        finally:
            torch.set_rng_state(cpu_rng)
            model.train(was_training)
        if count == 0:
            raise InputError("validation", "no validation batch of at least 2 studies; the validation split needs "
                                           ">= 2 studies and batch_size >= 2")
        return total / count

    def _end_epoch(self, engine: Engine) -> None:
        record = {"epoch": int(engine.state.epoch),
                  "train_loss": float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan}
        if self.val_data_loader is not None:
            record["val_loss"] = engine.state.metrics["val_loss"] = self.validation_loss()
        record["logit_scale"] = float(unwrap(self.network).loss.logit_scale.detach())
        self.history.append(record)
        logger.info("epoch %d: %s", engine.state.epoch, record)
        if self.history_path is not None and is_main_process():
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            save_json({"history": self.history, "world_size": world_size()}, self.history_path)


def batches_per_rank(count: int, device="cpu") -> list[int]:
    """Every rank's ``count`` (one all-gather), rank order; ``[count]`` when not distributed. ``device``: where the
    backend's tensors live (the rank's GPU under NCCL)."""
    if world_size() == 1:
        return [int(count)]
    gathered = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(gathered, torch.tensor([int(count)], device=device))
    return [int(t) for t in gathered]
