"""SimSiam heads and model (Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021), and the
linear classifier that fine-tunes or probes the adapted backbone.

SimSiam: an encoder f, a projection MLP (three layers, batch norm on every output, the last without affine
parameters) and a prediction MLP with a bottleneck (``dim -> dim / 4 -> dim``, no batch norm on its output).
The loss (``mri_ssl.losses.SimSiamLoss``) compares the prediction of one view with the stop-gradient projection of
the other.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.networks.vit import ViTEncoder2D, load_vit_encoder
from mri_ssl.networks.parameter_groups import parameter_groups_by_part
from mri_ssl.parameters import as_flag


class SimSiamProjector(nn.Sequential):
    """``in -> dim -> dim -> dim``: Linear + BN + ReLU twice, then Linear + BN without affine (the paper's recipe)."""

    def __init__(self, in_features: int, dim: int = 2048):
        super().__init__(
            nn.Linear(in_features, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
        )
        self.out_features = dim


class SimSiamPredictor(nn.Sequential):
    """``dim -> hidden -> dim`` with a bottleneck (hidden = dim / 4 in the paper): Linear + BN + ReLU, Linear."""

    def __init__(self, dim: int = 2048, hidden: int = 512):
        super().__init__(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


def build_vit_encoder(encoder: nn.Module | str | os.PathLike | None, encoder_config: Mapping | None = None,
                      pretrained: bool = True) -> ViTEncoder2D:
    """A ``ViTEncoder2D``: the given module, one loaded from an exported file (``encoder_final.pt`` of the SimSiam
    pretraining), or a new one from ``encoder_config`` (whose ``pretrained_path`` may name local ImageNet weights).
    ``pretrained=False`` keeps only the shape of a given encoder (random initialisation)."""
    if isinstance(encoder, (str, os.PathLike)) and str(encoder) != "":
        encoder = load_vit_encoder(encoder)
    elif encoder is None or (isinstance(encoder, str) and encoder == ""):
        return ViTEncoder2D(**dict(encoder_config or {}))
    if not isinstance(encoder, ViTEncoder2D):
        raise InputError("encoder", f"expected a ViTEncoder2D, an exported encoder file or None, got "
                                    f"{type(encoder).__name__}")
    return encoder if pretrained else ViTEncoder2D(**encoder.config())


class SimSiamModel(nn.Module):
    """Encoder + projector + predictor; ``forward(x)`` returns ``{"features": f, "projection": z, "prediction": p}``
    (``features``: the encoder's output, what the representation probe and the classifier read).

    Args:
        encoder, encoder_config: as ``build_vit_encoder``.
        projection_dim: width of the projector (2048 in the paper).
        predictor_hidden: the predictor's bottleneck (512 in the paper, a quarter of 2048).
    """

    def __init__(self, encoder: nn.Module | str | None = None, encoder_config: Mapping | None = None,
                 projection_dim: int = 2048, predictor_hidden: int = 512):
        super().__init__()
        self.encoder = build_vit_encoder(encoder, encoder_config)
        self.projector = SimSiamProjector(self.encoder.out_features, int(projection_dim))
        self.predictor = SimSiamPredictor(int(projection_dim), int(predictor_hidden))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        projection = self.projector(features)
        return {"features": features, "projection": projection, "prediction": self.predictor(projection)}


class FeatureStandardisation(nn.BatchNorm1d):
    """Batch norm without affine parameters on frozen features (MAE's linear probe, He et al. 2022): each feature
    scaled to zero mean and unit variance, with running statistics at evaluation; a linear layer after it is then
    still a linear classifier of the features.

    A training batch of one image (a label fraction's last, short batch) has no variance to estimate: it is
    normalised with the running statistics instead of raising.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out (not super().forward) so that TorchScript, which has no super(), scripts it.
        batch_statistics = self.training and x.shape[0] > 1
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, None, None, batch_statistics,
                                        self.momentum, self.eps)


class EncoderClassifier(nn.Module):
    """A linear head on an encoder's features: logits ``(B, num_classes)`` for BCE (one sigmoid per class).

    Args:
        encoder: a module mapping the input to ``(B, in_features)`` features.
        num_classes: number of output classes (at least 2).
        freeze_encoder: the linear probe: the encoder stays in eval mode (dropout off, any normalisation statistics
            frozen) and gets no gradient; only the head trains, on standardised features (``FeatureStandardisation``).
        in_features: the encoder's feature width (default: its ``out_features``).
        standardise_features: the ``FeatureStandardisation`` before the head (default: only with
            ``freeze_encoder``). True with a trained encoder keeps the head and its inputs those of the linear probe,
            so that a fine-tuned column differs from the probe only by the encoder's gradient.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, freeze_encoder: bool = False,
                 in_features: int | None = None, standardise_features: bool | None = None):
        super().__init__()
        if int(num_classes) < 2:
            raise InputError("num_classes", f"need at least 2 classes, got {num_classes}")
        width = int(in_features if in_features is not None else encoder.out_features)
        self.encoder = encoder
        self.head = nn.Linear(width, int(num_classes))
        self.freeze_encoder = as_flag(freeze_encoder, "freeze_encoder")
        # Identity when fine-tuning (unless asked for): no extra state-dict keys, so fine-tuned checkpoints keep
        # their layout.
        standardise = self.freeze_encoder if standardise_features is None else bool(standardise_features)
        self.feature_norm = FeatureStandardisation(width) if standardise else nn.Identity()
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "EncoderClassifier":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen backbone never updates normalisation statistics nor drops units
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, learning_rate: float, encoder_learning_rate: float) -> list[dict]:
        """Optimizer parameter groups: the head (and anything else outside the encoder) at ``learning_rate``, a
        trained encoder at ``encoder_learning_rate`` (fine-tuning, supervised from scratch); a frozen encoder gets no
        group, so the linear probe trains exactly as with one rate."""
        return parameter_groups_by_part(self, learning_rate, "head", [("encoder", self.encoder, encoder_learning_rate)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                features = self.encoder(x)
        else:
            features = self.encoder(x)
        return self.head(self.feature_norm(features))


class SequenceClassifier(EncoderClassifier):
    """A linear head on a ViT backbone (``EncoderClassifier``): logits ``(B, num_classes)`` for BCE.

    Args:
        encoder, encoder_config, pretrained: as ``build_vit_encoder``; an empty encoder gives the
            supervised-from-scratch baseline (or ImageNet weights through ``encoder_config["pretrained_path"]``).
        num_classes: 5 (T1, T2, Cine, LGE, Other).
        freeze_encoder: the linear probe (see ``EncoderClassifier``). The mean-pooled, layer-normed ViT tokens share
            a large common part (per-feature mean about 0.8) and differ between images by little (per-feature std
            0.03 for the cardiac SimSiam encoder), so a linear layer on the raw features needs weights far larger
            than a few hundred optimiser steps reach; the fine-tuned arms need no such layer, as the encoder moves
            its features itself.
    """

    def __init__(self, encoder: nn.Module | str | None = None, encoder_config: Mapping | None = None,
                 num_classes: int = 5, freeze_encoder: bool = False, pretrained: bool = True):
        super().__init__(build_vit_encoder(encoder, encoder_config, pretrained), num_classes, freeze_encoder)
