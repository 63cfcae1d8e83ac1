"""The downstream network of the sequence-invariant method: a U-Net decoder under a frozen pretrained encoder.

Chalcroft et al. 2025, Appendix B: the pretrained CNN encoder is frozen; a decoder with features
(768, 512, 256, 128, 64, 32), instance norm, GELU, dropout 0.2 and transposed-convolution upsampling is trained from
scratch on its stage maps (skip connections). The reference code left the frozen encoder in train mode, so its
dropout kept perturbing the features; here a frozen encoder is always in eval mode and runs without gradient.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.networks.encoder import PAPER_FEATURES, CNNEncoder3D, EncoderStage, load_encoder
from mri_ssl.networks.layout import channels_last_input, keep_channels_last
from mri_ssl.parameters import as_flag
from mri_ssl.networks.parameter_groups import parameter_groups_by_part

PAPER_DECODER_FEATURES = (768, 512, 256, 128, 64, 32)


class UpBlock(nn.Module):
    """Transposed-convolution 2x upsampling to half the channels, concatenation with the skip, two conv blocks."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int, dropout: float):
        super().__init__()
        upsampled_channels = max(1, in_channels // 2)
        self.upsample = UpSample(spatial_dims, in_channels, upsampled_channels, scale_factor=2, mode="deconv")
        self.convs = EncoderStage(spatial_dims, upsampled_channels + skip_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        if x.shape[2:] != skip.shape[2:]:
            raise InputError("input", f"spatial size must be a multiple of the encoder's downsampling factor; "
                                      f"upsampled {list(x.shape[2:])} does not match skip {list(skip.shape[2:])}")
        return self.convs(torch.cat([skip, x], dim=1))


def build_encoder(encoder: nn.Module | str | os.PathLike | None, encoder_config: Mapping | None,
                  pretrained: bool) -> CNNEncoder3D:
    """The encoder to put under the decoder.

    ``encoder`` is a ``CNNEncoder3D``, the path of an exported ``{config, state_dict}`` file (as the pretraining
    bundle writes ``encoder_best.pt``), or None / "" to build one from ``encoder_config`` (default: the paper's
    encoder). ``pretrained=False`` keeps only the shape: a fresh, randomly initialised encoder of the same config.
    """
    if isinstance(encoder, (str, os.PathLike)) and str(encoder) != "":
        encoder = load_encoder(encoder)
    elif encoder is None or (isinstance(encoder, str) and encoder == ""):
        config = {"spatial_dims": 3, "in_channels": 1, "features": PAPER_FEATURES, **dict(encoder_config or {})}
        return CNNEncoder3D(**config)
    if not isinstance(encoder, CNNEncoder3D):
        raise InputError("encoder", f"expected a CNNEncoder3D, an exported encoder file or None, got "
                                    f"{type(encoder).__name__}")
    if not pretrained:
        return CNNEncoder3D(**encoder.config())
    return encoder


class FrozenEncoderUNet(nn.Module):
    """A U-Net decoder on the stage maps of a (frozen) ``CNNEncoder3D``.

    Args:
        encoder: a ``CNNEncoder3D``, the path of an exported encoder file, or None for a random encoder built from
            ``encoder_config`` (the random-init baseline).
        out_channels: classes for segmentation (logits), 1 for denoising (the predicted noise).
        decoder_features: one entry more than the encoder has stages. Entry 0 is a conv block on the deepest stage
            map; entries 1..S-1 are up-blocks that join the encoder stages S-2..0 as skips; the last entry is a conv
            block at full resolution before the 1x1(x1) output convolution. The paper's (768, 512, 256, 128, 64, 32)
            fits the paper's five-stage encoder; a slim encoder needs a matching slim decoder.
        encoder_config: ``CNNEncoder3D`` arguments used when ``encoder`` is None.
        pretrained: False replaces the given encoder's weights with a fresh random initialisation (same shape).
        freeze_encoder: True (the paper's protocol) keeps the encoder in eval mode with no gradient, so only the
            decoder trains. The random-init baseline is frozen too, so both rows train the same parameters and differ
            only in the encoder's weights.
        dropout: dropout after every decoder convolution (0.2 in the paper).
        zero_init_head: start the output convolution at zero weights and bias, so the untrained network outputs 0.
            For a noise-predicting denoiser that is the identity denoiser (denoised = noisy input, PSNR gain 0 dB):
            training starts from "remove nothing" instead of from a random output that adds its own error (with a
            random head, a short CPU schedule ended with a validation MSE above the noise variance, i.e. a
            denoiser worse than its input). Gradients still reach the head's weights at step 0 (they depend on
            its input features), and the rest of the decoder from step 1.
        image_skip: also join the input image itself to the full-resolution decoder block (one more skip, before
            ``refine``), so the head sees the raw intensities next to the encoder's stage-0 maps. Not in the paper,
            and off in every shipped config: tissue classes on a T1w are mostly intensity bands, which a short
            schedule learns faster from the image, but the head then bypasses its encoder (the segmentation
            bundle's README has the measurements).

    Input ``(B, in_channels, *spatial)``, each spatial size a multiple of ``2 ** (stages - 1)``; output
    ``(B, out_channels, *spatial)``.
    """

    def __init__(self, encoder: nn.Module | str | os.PathLike | None = None, out_channels: int = 1,
                 decoder_features: Sequence[int] = PAPER_DECODER_FEATURES, encoder_config: Mapping | None = None,
                 pretrained: bool = True, freeze_encoder: bool = True, dropout: float = 0.2,
                 zero_init_head: bool = False, image_skip: bool = False):
        super().__init__()
        # `monai.bundle run --pretrained false` passes the text "false", which plain truth-testing reads as true
        self.encoder = build_encoder(encoder, encoder_config, as_flag(pretrained, "pretrained"))
        stage_features = self.encoder.features
        decoder_features = tuple(int(f) for f in decoder_features)
        if len(decoder_features) != len(stage_features) + 1 or min(decoder_features) < 1:
            raise InputError("decoder_features", f"need {len(stage_features) + 1} positive widths for an encoder with "
                                                 f"stages {list(stage_features)}, got {list(decoder_features)}")
        if int(out_channels) < 1:
            raise InputError("out_channels", f"must be at least 1, got {out_channels}")
        spatial_dims = self.encoder.spatial_dims
        self.freeze_encoder = as_flag(freeze_encoder, "freeze_encoder")
        self.bottleneck = EncoderStage(spatial_dims, stage_features[-1], decoder_features[0], dropout)
        self.up_blocks = nn.ModuleList(
            UpBlock(spatial_dims, decoder_features[i - 1], stage_features[-1 - i], decoder_features[i], dropout)
            for i in range(1, len(stage_features)))
        self.image_skip = as_flag(image_skip, "image_skip")
        refine_in = decoder_features[-2] + (self.encoder.in_channels if self.image_skip else 0)
        self.refine = EncoderStage(spatial_dims, refine_in, decoder_features[-1], dropout)
        self.head = Convolution(spatial_dims, decoder_features[-1], int(out_channels), kernel_size=1, conv_only=True)
        if zero_init_head:
            for parameter in self.head.parameters():
                nn.init.zeros_(parameter)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        # 3-D weights and activations are kept channels-last: faster on CPU, the same sums (layout.py)
        self.channels_last = keep_channels_last(self, spatial_dims)

    @property
    def downsampling_factor(self) -> int:
        return self.encoder.downsampling_factor

    def train(self, mode: bool = True) -> "FrozenEncoderUNet":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # no dropout in the frozen encoder, whatever mode the decoder is in
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimizer should update (the decoder's, plus the encoder's when not frozen)."""
        return (parameter for parameter in self.parameters() if parameter.requires_grad)

    def parameter_groups(self, learning_rate: float, encoder_learning_rate: float | None = None,
                         head_learning_rate: float | None = None) -> list[dict]:
        """Optimizer parameter groups: the decoder at ``learning_rate``, the encoder (when it is fine-tuned) at
        ``encoder_learning_rate`` and the 1x1(x1) output convolution at ``head_learning_rate`` (None: both
        ``learning_rate``).

        Fine-tuning a pretrained encoder usually takes a lower rate than the decoder trained from scratch, so its
        features move less than the decoder's random start. A frozen encoder has no group (nothing to update). The
        output convolution may take a higher rate: AdamW moves a weight by about the rate per step, and the logits
        are the output convolution's weights times unit-variance (normalised) features, so a short schedule at the
        decoder's rate ends with logits too small to be confident.
        """
        rates = {"learning_rate": learning_rate, "encoder_learning_rate": encoder_learning_rate,
                 "head_learning_rate": head_learning_rate}
        for name, rate in rates.items():
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                     or not 0 < float(rate) < float("inf")):
                raise InputError(name, f"must be a positive number, got {rate!r}")
        parts = [("head", self.head, head_learning_rate)] if head_learning_rate is not None else []
        encoder_rate = learning_rate if encoder_learning_rate is None else encoder_learning_rate
        parts.append(("encoder", self.encoder, encoder_rate))
        return parameter_groups_by_part(self, learning_rate, "decoder", parts)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder.forward_stages(x)[1]
        return self.encoder.forward_stages(x)[1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = channels_last_input(image, self.channels_last)
        stages = self.encode(image)
        x = self.bottleneck(stages[-1])
        skips = stages[:-1]
        for index, block in enumerate(self.up_blocks):  # deepest skip first (written for TorchScript)
            x = block(x, skips[len(skips) - 1 - index])
        if self.image_skip:
            x = torch.cat([image, x], dim=1)
        return self.head(self.refine(x))
