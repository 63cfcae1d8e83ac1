"""The pretraining model: encoder + projection head (contrastive branch) + optional reconstructor."""

from __future__ import annotations

import torch
from torch import nn

from mri_ssl.networks.encoder import PAPER_FEATURES, CNNEncoder3D
from mri_ssl.networks.heads import ProjectionHead, Reconstructor
from mri_ssl.networks.layout import channels_last_input, keep_channels_last


class ContrastiveReconstructionModel(nn.Module):
    """Encoder with a projection head for NT-Xent and, unless ``reconstruction=False``, a reconstruction decoder.

    Args:
        spatial_dims, in_channels, features, dropout, norm: the ``CNNEncoder3D``'s arguments.
        projection_hidden, projection_dim: the projection head's widths (paper: 512, 128).
        projection_batch_norm: batch norm on the projection head's hidden layer (``ProjectionHead``; the paper's
            head has none).
        reconstruction_channels: the reconstructor's widths, one per upsampling (paper: 384, 192, 96, 48); their
            number must equal the encoder's downsamplings so the output has the input's size.
        reconstruction: build the decoder (False when the reconstruction weight is 0).
        channels_last: keep a 3-D model's convolutions channels-last (below); ignored in 2-D. False is for
            benchmarks/pretrain_pipeline.py, which times both layouts.

    ``forward(x)`` with ``x`` of shape ``(B, in_channels, *spatial)`` returns a dict: ``features`` (B, features[-1]),
    ``projection`` (B, projection_dim) and, with the decoder, ``reconstruction`` (B, in_channels, *spatial).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, features=PAPER_FEATURES, dropout: float = 0.2,
                 projection_hidden: int = 512, projection_dim: int = 128,
                 reconstruction_channels=(384, 192, 96, 48), reconstruction: bool = True, norm: str = "INSTANCE",
                 projection_batch_norm: bool = False, channels_last: bool = True):
        super().__init__()
        self.encoder = CNNEncoder3D(spatial_dims, in_channels, features, dropout, norm)
        self.projector = ProjectionHead(self.encoder.out_features, projection_hidden, projection_dim,
                                        batch_norm=projection_batch_norm)
        self.reconstructor = None
        if reconstruction:
            if len(reconstruction_channels) != len(self.encoder.features) - 1:
                raise ValueError(f"reconstruction_channels needs {len(self.encoder.features) - 1} entries (one per "
                                 f"encoder downsampling), got {tuple(reconstruction_channels)}")
            self.reconstructor = Reconstructor(spatial_dims, self.encoder.out_features, reconstruction_channels,
                                               in_channels)
        # 3-D weights and activations are kept channels-last: faster on CPU, the same sums (layout.py)
        self.channels_last = keep_channels_last(self, spatial_dims, channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = channels_last_input(x, self.channels_last)
        features, stages = self.encoder.forward_stages(x)
        output = {"features": features, "projection": self.projector(features)}
        if self.reconstructor is not None:
            output["reconstruction"] = self.reconstructor(stages[-1])
        return output
