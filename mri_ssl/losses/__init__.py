"""Losses MONAI lacks: here, NT-Xent that gathers negatives across torch.distributed ranks."""

from mri_ssl.losses.cam_attention import CAMClassificationLoss, guided_attention_loss
from mri_ssl.losses.ntxent import NTXentLoss
from mri_ssl.losses.simsiam import SimSiamLoss, negative_cosine
from mri_ssl.losses.supcon import SupConLoss

__all__ = ["CAMClassificationLoss", "NTXentLoss", "SimSiamLoss", "SupConLoss", "guided_attention_loss",
           "negative_cosine"]
