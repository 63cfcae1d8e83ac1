"""The CNN encoder of the sequence-invariant method (Chalcroft et al. 2025, Appendix B), built from MONAI blocks."""

from __future__ import annotations

import inspect
import os
from typing import List, Sequence, Tuple, Union

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.io.weights import load_exported_module

PAPER_FEATURES = (64, 128, 256, 512, 768)


NORMS = ("INSTANCE", "BATCH")


def conv_norm_act(spatial_dims: int, in_channels: int, out_channels: int, dropout: float,
                  norm: str = "INSTANCE") -> Convolution:
    """A 3x3(x3) convolution followed by a norm (instance by default), GELU and dropout, in that order."""
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, act="GELU", norm=norm,
                       dropout=dropout, adn_ordering="NAD")


class EncoderStage(nn.Sequential):
    """Two ``conv_norm_act`` blocks; the encoder's unit of depth."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float,
                 norm: str = "INSTANCE"):
        super().__init__(conv_norm_act(spatial_dims, in_channels, out_channels, dropout, norm),
                         conv_norm_act(spatial_dims, out_channels, out_channels, dropout, norm))


class CNNEncoder3D(nn.Module):
    """A plain CNN encoder: ``len(features)`` stages, 2x max-pool downsampling between stages.

    With the paper's ``features = (64, 128, 256, 512, 768)`` a 96^3 input gives stage maps of 96^3, 48^3, 24^3,
    12^3 and 6^3 voxels and a pooled 768-d feature. Width and depth are arguments so CPU demos can run a slim copy
    (e.g. ``features=(8, 16, 32, 48, 64)``); ``spatial_dims=2`` gives the 2-D version.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for an MR image).
        features: output channels of each stage; the last is the pooled feature size.
        dropout: dropout after every convolution (0.2 in the paper).
        norm: ``INSTANCE`` (the paper's) or ``BATCH``. Instance norm right before global average pooling makes the
            pooled feature nearly the same for every image (each channel of the last map has zero mean and unit
            variance, so its pooled GELU is about 0.28 whatever the input); pooled-feature methods such as CAM
            classification and CAMContrast use ``BATCH``, as the U-Net / ResNet encoders of those papers do.

    Input ``(B, in_channels, *spatial)``, each spatial size divisible by ``2 ** (len(features) - 1)``.
    ``forward(x)`` returns the pooled feature ``(B, features[-1])``; ``forward(x, return_stages=True)`` returns
    ``(pooled, [stage_0, ..., stage_last])`` with ``stage_i`` of shape ``(B, features[i], *spatial / 2**i)``, the
    skip connections a U-Net decoder needs.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, features: Sequence[int] = PAPER_FEATURES,
                 dropout: float = 0.2, norm: str = "INSTANCE"):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError("spatial_dims", f"must be 2 or 3, got {spatial_dims}")
        features = tuple(int(f) for f in features)
        if len(features) < 1 or min(features) < 1:
            raise InputError("features", f"need at least one stage of positive width, got {features}")
        if not 0.0 <= float(dropout) < 1.0:
            raise InputError("dropout", f"must be in [0, 1), got {dropout}")
        norm = str(norm).upper()
        if norm not in NORMS:
            raise InputError("norm", f"expected one of {', '.join(NORMS)}, got {norm!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.features = features
        self.dropout = float(dropout)
        self.norm = norm
        channels = (in_channels,) + features
        self.stages = nn.ModuleList(
            EncoderStage(spatial_dims, channels[i], channels[i + 1], dropout, norm) for i in range(len(features)))
        self.downsample = Pool["MAX", spatial_dims](kernel_size=2)
        self.pool = Pool["ADAPTIVEAVG", spatial_dims](1)

    @property
    def out_features(self) -> int:
        return self.features[-1]

    @property
    def downsampling_factor(self) -> int:
        """Each spatial size of the input must be a multiple of this."""
        return int(2 ** (len(self.features) - 1))

    def config(self) -> dict:
        """Constructor arguments, saved with exported weights so the encoder can be rebuilt without code."""
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels, "features": list(self.features),
                "dropout": self.dropout, "norm": self.norm}

    def forward_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``(pooled, [stage_0, ..., stage_last])``: the pooled feature and the skip connections a decoder needs."""
        stages: List[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            if index > 0:
                x = self.downsample(x)
            x = stage(x)
            stages.append(x)
        return torch.flatten(self.pool(x), 1), stages

    def forward(self, x: torch.Tensor,
                return_stages: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        pooled, stages = self.forward_stages(x)
        if return_stages:
            return pooled, stages
        return pooled


# What an exported config may hold: the encoder's constructor arguments, and nothing else.
ENCODER_CONFIG_KEYS = frozenset(inspect.signature(CNNEncoder3D).parameters)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> CNNEncoder3D:
    """Rebuild a ``CNNEncoder3D`` from an exported ``{"config", "state_dict"}`` file, in eval mode on ``device``.

    Only the known constructor arguments are accepted from the file (never code). The ``.safetensors`` twin written
    by ``export_encoder`` is read when present; otherwise the file is read with ``weights_only=True``.
    """
    return load_exported_module(path, CNNEncoder3D, ENCODER_CONFIG_KEYS, device,
                                "encoder config has unknown keys").eval()
