"""Losses MONAI lacks: NT-Xent and CLIP losses that gather negatives across torch.distributed ranks."""

from mri_ssl.losses.cam_attention import CAMClassificationLoss, guided_attention_loss
from mri_ssl.losses.clip import CLIPLoss
from mri_ssl.losses.grading import JointGradingLoss
from mri_ssl.losses.ntxent import NTXentLoss
from mri_ssl.losses.simsiam import SimSiamLoss, negative_cosine
from mri_ssl.losses.supcon import SupConLoss

__all__ = ["CAMClassificationLoss", "CLIPLoss", "JointGradingLoss", "NTXentLoss", "SimSiamLoss", "SupConLoss",
           "guided_attention_loss", "negative_cosine"]
