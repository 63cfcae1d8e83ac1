"""Trainers for the non-supervised iterations, crash-safe checkpointing, gradient clipping, evaluation reports."""

from mri_ssl.engines.cam_trainer import CAMClassifierTrainer
from mri_ssl.engines.camcontrast_trainer import CAMContrastTrainer
from mri_ssl.engines.checkpoint import AtomicCheckpointer, export_encoder, save_checkpoint, save_safetensors
from mri_ssl.engines.classification_report import ClassificationReport
from mri_ssl.engines.clipping import GradientClipping
from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer, ValidationLoss
from mri_ssl.engines.features import FeatureWriter, load_encoder_weights, write_features
from mri_ssl.engines.guards import NonFiniteLossError, NonFiniteLossGuard
from mri_ssl.engines.progress import attach_progress_bar
from mri_ssl.engines.reports import DenoisingReport, SegmentationReport
from mri_ssl.engines.simsiam_trainer import (
    SimSiamTrainer,
    simsiam_learning_rate,
    simsiam_lr_lambdas,
    simsiam_optimizer,
    simsiam_parameter_groups,
)
# Loading is a layer below (networks load their own weights); re-exported here beside saving, as bundles use it.
from mri_ssl.io.weights import load_checkpoint, load_network_weights, load_safetensors
from mri_ssl.networks.encoder import load_encoder

__all__ = [
    "CAMClassifierTrainer",
    "CAMContrastTrainer",
    "AtomicCheckpointer",
    "ContrastiveTrainer",
    "DenoisingReport",
    "FeatureWriter",
    "GradientClipping",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "SegmentationReport",
    "ValidationLoss",
    "attach_progress_bar",
    "export_encoder",
    "load_checkpoint",
    "load_encoder",
    "load_encoder_weights",
    "load_network_weights",
    "load_safetensors",
    "save_checkpoint",
    "save_safetensors",
    "write_features",
    "ClassificationReport",
    "SimSiamTrainer",
    "simsiam_learning_rate",
    "simsiam_lr_lambdas",
    "simsiam_optimizer",
    "simsiam_parameter_groups",
]
