"""Networks: the CNN encoder and the heads of the pretraining model."""

from mri_ssl.networks.encoder import PAPER_FEATURES, CNNEncoder3D
from mri_ssl.networks.heads import ProjectionHead, Reconstructor
from mri_ssl.networks.pretrain_model import ContrastiveReconstructionModel

__all__ = ["PAPER_FEATURES", "CNNEncoder3D", "ContrastiveReconstructionModel", "ProjectionHead", "Reconstructor"]
