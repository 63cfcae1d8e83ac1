"""MONAI-style transforms the library adds (array transform + dictionary wrapper, like MONAI's own)."""

from mri_ssl.transforms.simulate_sequence import (
    RandSimulateSequence,
    RandSimulateSequenced,
    SimulateSequence,
    SimulateSequenced,
)

__all__ = ["RandSimulateSequence", "RandSimulateSequenced", "SimulateSequence", "SimulateSequenced"]
