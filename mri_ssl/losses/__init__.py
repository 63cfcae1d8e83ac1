"""Losses MONAI lacks: here, NT-Xent that gathers negatives across torch.distributed ranks."""

from mri_ssl.losses.ntxent import NTXentLoss
from mri_ssl.losses.simsiam import SimSiamLoss, negative_cosine

__all__ = ["NTXentLoss", "SimSiamLoss", "negative_cosine"]
