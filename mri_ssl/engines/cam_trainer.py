"""Stage-1 trainer of CAMContrast: the CAM classifier with cross-entropy + lambda * guided attention loss.

MONAI's SupervisedTrainer calls ``loss(network(x), y)``; this loss also needs the CAMs of the same forward pass, so
the iteration asks the network for both (``CAMClassifier(x, return_cams=True)``) and computes the loss in the graph.
With ``attention_weight = 0`` it is the plain supervised (SupCE) baseline.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from ignite.engine import Engine
from monai.engines import Trainer
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys

from mri_ssl.engines.clipping import backward_and_step
from mri_ssl.engines.guards import check_loss
from mri_ssl.errors import InputError


class CAMClassifierTrainer(Trainer):
    """Args: as MONAI's SupervisedTrainer, with ``loss_function`` a ``CAMClassificationLoss`` and the batch holding
    ``image_key`` (B, 3, H, W) and ``label_key`` (B,) classes. ``inferer`` (the bundle's ``train#inferer``; default
    ``SimpleInferer``) runs the network, which must return ``(logits, cams)`` for ``return_cams=True``."""

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable,
                 network: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_function: torch.nn.Module,
                 image_key: str = "image", label_key: str = "abnormal", amp: bool = False,
                 epoch_length: int | None = None, train_handlers: Sequence | None = None, inferer=None):
        device = torch.device(device)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         epoch_length=epoch_length, handlers=train_handlers, amp=bool(amp) and device.type == "cuda",
                         decollate=False)
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.image_key = image_key
        self.label_key = label_key
        self.inferer = inferer if inferer is not None else SimpleInferer()

    def _iteration(self, engine: Engine, batchdata: dict) -> dict:
        missing = [key for key in (self.image_key, self.label_key) if key not in batchdata]
        if missing:
            raise InputError("batch", f"missing keys {missing}")
        device = engine.state.device
        images = torch.as_tensor(batchdata[self.image_key]).to(device=device, dtype=torch.float32)
        labels = torch.as_tensor(batchdata[self.label_key]).to(device=device).view(-1).long()
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=self.amp):
            logits, cams = self.inferer(images, self.network, return_cams=True)
        losses = self.loss_function(logits, cams, labels)
        loss = losses["loss"]
        check_loss(loss, engine)  # NonFiniteLossError before backward: the weights stay finite
        backward_and_step(loss, self.optimizer, self.network.parameters(), None, self.scaler if self.amp else None)
        return {CommonKeys.LOSS: float(loss.detach()), "ce": float(losses["ce"].detach()),
                "attention": float(losses["attention"].detach())}
