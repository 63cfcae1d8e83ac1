"""Stage-2 trainer of CAMContrast and its contrastive baselines, on views made by the data loader.

``method``:
* ``camcontrast``: each image crop (augmented) against its heatmap crop. NT-Xent over the 2B projections, image
  tower for the images and heatmap tower for the heatmaps, with the full 2B-1 denominator (image-image,
  image-heatmap and heatmap-heatmap pairs), in float32 (``NTXentLoss``).
* ``simclr``: two augmented views of each crop, both through the image tower, NT-Xent.
* ``supcon``: the same two views with the coarse labels, supervised contrastive loss (``SupConLoss``).

The supervised cross-entropy baseline (SupCE) is stage 1's classifier trained without the attention term.

Collapse alarm (camcontrast): the projection spread (``projection_spread``: std over the batch of the L2-normalised
projections, near ``1/sqrt(dim)`` when spread out, 0 when every input maps to one vector) of each tower on its own,
averaged over the epoch's batches, is put in ``engine.state.metrics`` (``image_projection_std``,
``heatmap_projection_std``) and logged; when either falls below ``collapse_alarm_fraction / sqrt(dim)`` a warning
says so and ``collapse_alarms`` counts it. The two towers are measured apart because one collapsed tower hides in
the spread of the concatenated projections when the other is healthy. Each tower's spread is taken over the distinct
inputs of the batch (``distinct_rows``): a normal image's heatmap crop is all zero after negative suppression, so
half the heatmap crops of a balanced batch are one and the same input, whose projections coincide by construction;
counted as they were, they pulled the heatmap tower's spread under the alarm's threshold with a healthy tower.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import logging
import math

import torch

from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer
from mri_ssl.errors import InputError
from mri_ssl.metrics.representation_probe import projection_spread

logger = logging.getLogger(__name__)

METHODS = ("camcontrast", "simclr", "supcon")


def distinct_rows(inputs: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each distinct item of ``inputs`` ``(B, ...)`` (exact equality), in order."""
    _, inverse = torch.unique(inputs.detach().reshape(inputs.shape[0], -1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), inputs.shape[0], dtype=torch.long, device=inverse.device)
    first.scatter_reduce_(0, inverse, torch.arange(inputs.shape[0], device=inverse.device), reduce="amin")
    return first.sort().values


class CAMContrastTrainer(ContrastiveTrainer):
    """``ContrastiveTrainer`` whose two views come from the batch: keys ``image`` and ``heatmap`` (camcontrast) or
    ``image`` and ``view2`` (simclr, supcon, which also read ``label_key``).

    Args:
        method: one of ``METHODS``.
        network: a ``CAMContrastModel`` (or DDP-wrapped one).
        contrastive_loss: ``NTXentLoss`` for camcontrast / simclr, ``SupConLoss`` for supcon.
        label_key: the coarse label's key (supcon).
        collapse_alarm_fraction: warn when a tower's projection spread falls below this fraction of ``1/sqrt(dim)``.
        Others as ``ContrastiveTrainer`` (no view pair, no reconstruction).
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable,
                 network: torch.nn.Module, optimizer: torch.optim.Optimizer, contrastive_loss: Callable,
                 method: str = "camcontrast", label_key: str = "abnormal", grad_clip_norm: float | None = None,
                 amp: bool = False, epoch_length: int | None = None, train_handlers: Sequence | None = None,
                 seed: int | None = 0, collapse_alarm_fraction: float = 0.5):
        if method not in METHODS:
            raise InputError("method", f"unknown pretraining method {method!r}; expected one of {', '.join(METHODS)} "
                                       f"(SupCE is stage1.json with attention_weight 0)")
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, view_pair=None, contrastive_loss=contrastive_loss, input_keys=("image",),
                         reconstruction_weight=0.0, grad_clip_norm=grad_clip_norm, amp=amp,
                         epoch_length=epoch_length, train_handlers=train_handlers, seed=seed)
        self.method = method
        self.label_key = label_key
        self.collapse_alarm_fraction = float(collapse_alarm_fraction)
        self.collapse_alarms = 0
        self.tower_spreads: dict[str, list[float]] = {}

    def _start_epoch(self, engine) -> None:
        super()._start_epoch(engine)
        self.tower_spreads = {}

    def _record_tower_spreads(self, **projections: torch.Tensor) -> None:
        for name, projection in projections.items():
            if projection.shape[0] < 2:
                continue  # one distinct input in the batch: no spread to measure
            self.tower_spreads.setdefault(name, []).append(projection_spread(projection))
            values = self.tower_spreads[name]
            self.state.metrics[f"{name}_projection_std"] = sum(values) / len(values)

    def _log_epoch(self, engine) -> None:
        super()._log_epoch(engine)
        if not self.tower_spreads:
            return
        dim = getattr(getattr(self.network, "module", self.network).projector[-1], "out_features", 1)
        threshold = self.collapse_alarm_fraction / math.sqrt(dim)
        means = {name: sum(values) / len(values) for name, values in self.tower_spreads.items()}
        logger.info("epoch %d: projection spread per tower %s", engine.state.epoch,
                    ", ".join(f"{name} {value:.4f}" for name, value in means.items()))
        collapsed = [name for name, value in means.items() if value < threshold]
        if collapsed:
            self.collapse_alarms += 1
            logger.warning("epoch %d: COLLAPSE ALARM: projection spread of the %s tower below %.4f (%.2f x the healthy "
                           "1/sqrt(%d)); the towers map their inputs to nearly one vector", engine.state.epoch,
                           " and ".join(collapsed), threshold, self.collapse_alarm_fraction, dim)

    def prepare_inputs(self, batchdata: dict, device: torch.device) -> dict[str, torch.Tensor]:
        second = "heatmap" if self.method == "camcontrast" else "view2"
        keys = ["image", second] + ([self.label_key] if self.method == "supcon" else [])
        missing = [key for key in keys if key not in batchdata]
        if missing:
            raise InputError("batch", f"missing keys {missing}; method {self.method!r} needs {keys}")
        inputs = {"image": torch.as_tensor(batchdata["image"]).to(device=device, dtype=torch.float32),
                  "second": torch.as_tensor(batchdata[second]).to(device=device, dtype=torch.float32)}
        if self.method == "supcon":
            inputs["label"] = torch.as_tensor(batchdata[self.label_key]).to(device=device).view(-1)
        return inputs

    def compute_losses(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, second = inputs["image"], inputs["second"]
        batch_size = images.shape[0]
        if batch_size < 2:
            raise InputError("batch_size", "contrastive learning needs at least 2 items per batch; use drop_last=True "
                                           "or a larger batch")
        with torch.autocast(torch.device(self.state.device).type, enabled=self.amp):
            if self.method == "camcontrast":
                output = self.network(images, second)
                z1, z2 = output["projection"], output["heatmap_projection"]
                projection = torch.cat([z1, z2])
                # Each tower's spread over its distinct inputs: every normal image's heatmap crop is all zero after
                # negative suppression (half the demo's crops), and identical inputs map to one vector by
                # construction, which is not a collapse of the tower.
                self._record_tower_spreads(image=z1[distinct_rows(images)], heatmap=z2[distinct_rows(second)])
            else:
                projection = self.network(torch.cat([images, second]))["projection"]
                z1, z2 = projection[:batch_size], projection[batch_size:]
        if self.method == "supcon":
            contrastive = self.contrastive_loss(z1, z2, inputs["label"])
        else:
            contrastive = self.contrastive_loss(z1, z2)
        return {"loss": contrastive, "contrastive": contrastive, "projection": projection}
