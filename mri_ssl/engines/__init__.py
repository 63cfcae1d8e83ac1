"""Trainers for the non-supervised iterations, crash-safe checkpointing, gradient clipping, evaluation reports."""

from mri_ssl.engines.checkpoint import AtomicCheckpointer, export_encoder, load_checkpoint, save_checkpoint
from mri_ssl.engines.classification_report import ClassificationReport, classification_metrics
from mri_ssl.engines.clipping import GradientClipping
from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer, NonFiniteLossError, ValidationLoss
from mri_ssl.engines.features import load_encoder, write_features
from mri_ssl.engines.progress import attach_progress_bar
from mri_ssl.engines.reports import DenoisingReport, SegmentationReport
from mri_ssl.engines.simsiam_trainer import (
    SimSiamTrainer,
    simsiam_learning_rate,
    simsiam_lr_lambdas,
    simsiam_parameter_groups,
)

__all__ = [
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
    "ClassificationReport",
    "SimSiamTrainer",
    "classification_metrics",
    "simsiam_learning_rate",
    "simsiam_lr_lambdas",
    "simsiam_parameter_groups",
]
