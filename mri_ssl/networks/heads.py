"""Heads on top of the encoder for pretraining: the contrastive projector and the reconstruction decoder."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


class ProjectionHead(nn.Sequential):
    """Two-layer MLP to the contrastive space: ``in_features -> hidden (GELU) -> out_features`` (768 -> 512 -> 128).

    ``batch_norm=True`` puts a ``BatchNorm1d`` between the first linear layer and the GELU, as SimCLR's projector
    does. Without it (the default, and the sequence-invariant paper's head) the CPU pretraining recipe kept the
    projections of a batch nearly one vector (projection spread 0.003-0.006 against a healthy ~0.18) and held-out
    NT-Xent at its chance value: an instance-normalised encoder's pooled features differ little between crops, and
    the head passes on mostly what they share. Normalising each hidden unit over the batch removes what the crops
    share and scales up how they differ; the measurements are in the pretraining bundle's README. The default keeps
    the module indices (``0`` linear, ``1`` GELU, ``2`` linear) of weights saved without it.
    """

    def __init__(self, in_features: int = 768, hidden_features: int = 512, out_features: int = 128,
                 batch_norm: bool = False):
        hidden = [nn.Linear(in_features, hidden_features)]
        if batch_norm:
            hidden.append(nn.BatchNorm1d(hidden_features))
        super().__init__(*hidden, nn.GELU(), nn.Linear(hidden_features, out_features))


class Reconstructor(nn.Module):
    """Decoder from the encoder's deepest feature map back to an image.

    Four transposed-convolution blocks of stride 2 (paper: 768 -> 384 -> 192 -> 96 -> 48), each followed by instance
    norm and GELU, then a 1x1(x1) convolution to ``out_channels``. Input ``(B, in_channels, *spatial)``; output
    ``(B, out_channels, *spatial * 2**len(channels))``: the input size for the paper's five-stage encoder.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 768, channels: Sequence[int] = (384, 192, 96, 48),
                 out_channels: int = 1):
        super().__init__()
        chain = (in_channels,) + tuple(channels)
        self.blocks = nn.Sequential(*[
            Convolution(spatial_dims, chain[i], chain[i + 1], strides=2, kernel_size=2, act="GELU", norm="INSTANCE",
                        is_transposed=True, adn_ordering="NA", padding=0, output_padding=0)
            for i in range(len(channels))
        ])
        self.head = Convolution(spatial_dims, chain[-1], out_channels, kernel_size=1, conv_only=True)

    def forward(self, deepest_features: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(deepest_features))
