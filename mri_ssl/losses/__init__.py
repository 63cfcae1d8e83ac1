"""Losses MONAI lacks: here, NT-Xent that gathers negatives across torch.distributed ranks."""

from mri_ssl.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss"]
