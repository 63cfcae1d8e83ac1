"""Networks: the CNN encoder, the heads of the pretraining model and the frozen-encoder U-Net."""

from mri_ssl.networks.cam import CAMClassifier, CAMContrastModel, HeatmapEncoder, JointGradingClassifier
from mri_ssl.networks.encoder import PAPER_FEATURES, CNNEncoder3D
from mri_ssl.networks.frozen_unet import PAPER_DECODER_FEATURES, FrozenEncoderUNet
from mri_ssl.networks.heads import ProjectionHead, Reconstructor
from mri_ssl.networks.pretrain_model import ContrastiveReconstructionModel
from mri_ssl.networks.simsiam import (EncoderClassifier, SequenceClassifier, SimSiamModel, SimSiamPredictor,
                                      SimSiamProjector)
from mri_ssl.networks.vit import ViTEncoder2D, load_vit_encoder

__all__ = [
    "CAMClassifier", "CAMContrastModel", "HeatmapEncoder", "JointGradingClassifier",
    "PAPER_DECODER_FEATURES", "PAPER_FEATURES", "CNNEncoder3D", "ContrastiveReconstructionModel", "FrozenEncoderUNet",
    "ProjectionHead", "Reconstructor",
    "EncoderClassifier", "SequenceClassifier", "SimSiamModel", "SimSiamPredictor", "SimSiamProjector", "ViTEncoder2D",
    "load_vit_encoder",
]
