"""MONAI-style transforms the library adds (array transform + dictionary wrapper, like MONAI's own)."""

from mri_ssl.transforms.noise import AddGaussianNoised
from mri_ssl.transforms.photo import RandGrayscale, RandGrayscaled
from mri_ssl.transforms.simulate_sequence import (
    RandSimulateSequence,
    RandSimulateSequenced,
    SimulateSequence,
    SimulateSequenced,
)
from mri_ssl.transforms.simsiam_views import SimSiamViewPair
from mri_ssl.transforms.training_contrast import RandTrainingContrastd
from mri_ssl.transforms.views import VIEW_MODES, ContrastiveViewPair

__all__ = [
    "VIEW_MODES",
    "AddGaussianNoised",
    "RandGrayscale",
    "RandGrayscaled",
    "ContrastiveViewPair",
    "RandSimulateSequence",
    "RandSimulateSequenced",
    "RandTrainingContrastd",
    "SimulateSequence",
    "SimulateSequenced",
    "SimSiamViewPair",
]
