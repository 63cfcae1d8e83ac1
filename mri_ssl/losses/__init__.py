"""Losses MONAI lacks: NT-Xent and CLIP losses that gather negatives across torch.distributed ranks."""

from mri_ssl.losses.clip import CLIPLoss, weight_decay_groups
from mri_ssl.losses.ntxent import NTXentLoss
from mri_ssl.losses.simsiam import SimSiamLoss, negative_cosine

__all__ = ["CLIPLoss", "NTXentLoss", "SimSiamLoss", "negative_cosine", "weight_decay_groups"]
