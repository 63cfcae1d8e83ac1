"""Trainers for the non-supervised iterations, crash-safe checkpointing, gradient clipping, evaluation reports."""

from mri_ssl.engines.cam_trainer import CAMClassifierTrainer
from mri_ssl.engines.camcontrast_trainer import CAMContrastTrainer
from mri_ssl.engines.checkpoint import AtomicCheckpointer, export_encoder, load_checkpoint, save_checkpoint
from mri_ssl.engines.clipping import GradientClipping
from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer, NonFiniteLossError, ValidationLoss
from mri_ssl.engines.features import load_encoder, write_features
from mri_ssl.engines.progress import attach_progress_bar
from mri_ssl.engines.reports import DenoisingReport, SegmentationReport

__all__ = [
    "CAMClassifierTrainer",
    "CAMContrastTrainer",
    "AtomicCheckpointer",
    "ContrastiveTrainer",
    "DenoisingReport",
    "GradientClipping",
    "NonFiniteLossError",
    "SegmentationReport",
    "ValidationLoss",
    "attach_progress_bar",
    "export_encoder",
    "load_checkpoint",
    "load_encoder",
    "save_checkpoint",
    "write_features",
]
