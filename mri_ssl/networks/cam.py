"""CAMContrast networks (Yap & Ng): the CAM classifier of stage 1 and the image / heatmap towers of stage 2.

Class activation maps (Zhou et al. 2016) are computed *in the graph* from the last feature maps ``F`` (B, K, h, w)
and the linear classifier's weights ``w`` (C, K): ``M^c = sum_k w_k^c F_k``. Because the classifier sits on global
average pooling, ``GAP(M^c) + b^c`` is exactly the logit of class c, which the tests check. MONAI's GradCAM is not
used: it switches the model to eval mode and hooks gradients, which is for inspecting a trained model, not for a
loss that trains through the CAMs.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.networks.encoder import PAPER_FEATURES, CNNEncoder3D
from mri_ssl.networks.frozen_unet import build_encoder
from mri_ssl.networks.heads import ProjectionHead
from mri_ssl.parameters import as_flag

FUNDUS_ENCODER_CONFIG = {"spatial_dims": 2, "in_channels": 3}


def class_activation_maps(feature_maps: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """``M[b, c] = sum_k class_weights[c, k] * feature_maps[b, k]``: (B, K, *spatial), (C, K) -> (B, C, *spatial)."""
    if feature_maps.ndim < 3 or class_weights.ndim != 2 or class_weights.shape[1] != feature_maps.shape[1]:
        raise InputError("feature_maps", f"expected (B, K, *spatial) maps and (C, K) weights, got "
                                         f"{list(feature_maps.shape)} and {list(class_weights.shape)}")
    return torch.einsum("bk...,ck->bc...", feature_maps, class_weights.to(feature_maps.dtype))


def _encoder(encoder: nn.Module | str | os.PathLike | None, encoder_config: Mapping | None,
             pretrained: bool) -> CNNEncoder3D:

    config = {**FUNDUS_ENCODER_CONFIG, **dict(encoder_config or {})}
    return build_encoder(encoder, config, pretrained)


class CAMClassifier(nn.Module):
    """The U-Net encoder (``CNNEncoder3D``, 2-D), global average pooling and one linear layer.

    Args:
        num_classes: 2 for normal (class 0) / abnormal (class 1).
        encoder: an encoder, the path of an exported encoder file (transfer from pretraining), or None for a new
            one built from ``encoder_config`` (default: the paper-width 2-D encoder on RGB input).
        encoder_config: ``CNNEncoder3D`` arguments (``spatial_dims=2, in_channels=3`` unless given).
        pretrained: False keeps only the shape of the given encoder (random-init baseline).
        freeze_encoder: linear evaluation: the encoder stays in eval mode without gradient; only the linear layer
            trains.

    ``forward(x)`` returns logits (B, num_classes); ``forward(x, return_cams=True)`` returns ``(logits, cams)`` with
    the raw CAMs (B, num_classes, h, w) at the last stage's resolution (input / 2**(stages-1)).
    """

    def __init__(self, num_classes: int = 2, encoder: nn.Module | str | os.PathLike | None = None,
                 encoder_config: Mapping | None = None, pretrained: bool = True, freeze_encoder: bool = False):
        super().__init__()
        if int(num_classes) < 2:
            raise InputError("num_classes", f"must be at least 2, got {num_classes}")
        self.encoder = _encoder(encoder, encoder_config, pretrained)
        self.classifier = nn.Linear(self.encoder.out_features, int(num_classes))
        self.freeze_encoder = as_flag(freeze_encoder, "freeze_encoder")
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "CAMClassifier":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (parameter for parameter in self.parameters() if parameter.requires_grad)

    def forward(self, x: torch.Tensor,
                return_cams: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if self.freeze_encoder:  # linear evaluation: no gradient through the encoder
            with torch.no_grad():
                pooled, stages = self.encoder.forward_stages(x)
        else:
            pooled, stages = self.encoder.forward_stages(x)
        logits = self.classifier(pooled)
        if not return_cams:
            return logits
        return logits, class_activation_maps(stages[-1], self.classifier.weight)


class JointGradingClassifier(CAMClassifier):
    """Joint DR / DME grader (IDRiD grading): the ``CAMClassifier`` encoder with two linear heads on the pooled
    features, ``dr_grades`` retinopathy logits followed by ``dme_grades`` macular-oedema logits.

    ``forward(x)`` returns the two heads' logits side by side, (B, dr_grades + dme_grades), so MONAI's supervised
    engines carry them as one ``pred``; ``mri_ssl.losses.grading.split_grading_logits`` separates them and
    ``mri_ssl.losses.JointGradingLoss`` gives each head its own softmax cross-entropy. The two heads are stored as the
    two row blocks of one ``nn.Linear`` (``classifier``), which is the same thing as two linear layers and keeps
    ``return_cams`` (one CAM per grade) and linear evaluation (``freeze_encoder``) as in the parent.
    """

    def __init__(self, dr_grades: int = 5, dme_grades: int = 3, encoder: nn.Module | str | os.PathLike | None = None,
                 encoder_config: Mapping | None = None, pretrained: bool = True, freeze_encoder: bool = False):
        if int(dr_grades) < 2 or int(dme_grades) < 2:
            raise InputError("dr_grades/dme_grades", f"each head needs at least 2 grades, got {dr_grades} and "
                                                     f"{dme_grades}")
        super().__init__(num_classes=int(dr_grades) + int(dme_grades), encoder=encoder,
                         encoder_config=encoder_config, pretrained=pretrained, freeze_encoder=freeze_encoder)
        self.dr_grades, self.dme_grades = int(dr_grades), int(dme_grades)


class HeatmapEncoder(nn.Module):
    """Three 3x3 convolutions, each followed by ReLU, then global average pooling: (B, 1, h, w) -> (B, features[-1]).

    ``batch_norm=True`` puts a ``BatchNorm2d`` between each convolution and its ReLU (the convolutions then have no
    bias). The paper's tower has none: at PyTorch's default initialisation its biases outweigh the small [0, 1]
    heatmap signal and every heatmap crop maps to nearly one projection (the collapse measured in the bundle's
    README); normalising each channel over the batch keeps how the heatmaps differ instead.
    """

    def __init__(self, in_channels: int = 1, features: Sequence[int] = (64, 128, 256), batch_norm: bool = False):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 3 or min(features) < 1:
            raise InputError("heatmap_features", f"expected three positive widths, got {list(features)}")
        channels = (int(in_channels),) + features
        layers = []
        for i in range(3):
            layers.append(nn.Conv2d(channels[i], channels[i + 1], kernel_size=3, padding=1, bias=not batch_norm))
            layers += [nn.BatchNorm2d(channels[i + 1])] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.out_features = features[-1]

    def forward(self, heatmap: torch.Tensor) -> torch.Tensor:
        return self.convs(heatmap).mean(dim=(2, 3))


class CAMContrastModel(nn.Module):
    """Stage-2 towers: image encoder + 2-layer MLP projector, heatmap encoder + its own projector, both to 128-d.

    ``forward(images, heatmaps=None)`` returns ``{"features", "projection"}`` for the images and, when heatmaps are
    given, ``"heatmap_projection"``. One forward call holds both towers so DistributedDataParallel sees them together.
    The image ``encoder`` is what transfer learning takes (exported as ``encoder_*.pt``).

    ``heatmap_batch_norm`` (``HeatmapEncoder``) and ``projection_batch_norm`` (both projectors, ``ProjectionHead``)
    default to False, the paper's towers.
    """

    def __init__(self, encoder_config: Mapping | None = None, heatmap_features: Sequence[int] = (64, 128, 256),
                 projection_hidden: int = 512, projection_dim: int = 128, heatmap: bool = True,
                 heatmap_batch_norm: bool = False, projection_batch_norm: bool = False):
        super().__init__()
        config = {**FUNDUS_ENCODER_CONFIG, "features": PAPER_FEATURES, **dict(encoder_config or {})}
        self.encoder = CNNEncoder3D(**config)
        projection_batch_norm = as_flag(projection_batch_norm, "projection_batch_norm")
        self.projector = ProjectionHead(self.encoder.out_features, projection_hidden, projection_dim,
                                        batch_norm=projection_batch_norm)
        self.heatmap_encoder = self.heatmap_projector = None
        if heatmap:
            self.heatmap_encoder = HeatmapEncoder(1, heatmap_features, batch_norm=bool(heatmap_batch_norm))
            self.heatmap_projector = ProjectionHead(self.heatmap_encoder.out_features, projection_hidden,
                                                    projection_dim, batch_norm=projection_batch_norm)

    def forward(self, images: torch.Tensor, heatmaps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        features = self.encoder(images)
        output = {"features": features, "projection": self.projector(features)}
        if heatmaps is not None:
            if self.heatmap_encoder is None:
                raise InputError("heatmaps", "this model was built without a heatmap tower (heatmap=False)")
            output["heatmap_projection"] = self.heatmap_projector(self.heatmap_encoder(heatmaps))
        return output
