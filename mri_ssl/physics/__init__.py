"""qMRI -> MR signal: sequence equations, protocol sampling, fused kernels and tissue phantoms.

Written in torch rather than on top of nitorch (which the reference work used) because nitorch is not published on
any package registry; the equations are the same and run batched on any device.
"""

from mri_ssl.physics.phantom import TISSUE_CLASSES, Phantom, mni152_phantom, mprage_fidelity, tissue_parameters
from mri_ssl.physics.protocols import (
    PROTOCOL_PARAMETERS,
    SEQUENCES,
    TYPICAL_PROTOCOLS,
    check_protocol,
    sample_protocol,
)
from mri_ssl.physics.sequences import (
    bssfp,
    bssfp_optimal_flip_angle,
    ernst_angle,
    flair,
    flair_null_ti,
    fse,
    gre,
    mprage,
    rician_noise,
)
from mri_ssl.physics.simulate import MAP_NAMES, check_maps, simulate

__all__ = [
    "MAP_NAMES",
    "Phantom",
    "TISSUE_CLASSES",
    "mni152_phantom",
    "mprage_fidelity",
    "tissue_parameters",
    "PROTOCOL_PARAMETERS",
    "SEQUENCES",
    "TYPICAL_PROTOCOLS",
    "bssfp",
    "bssfp_optimal_flip_angle",
    "check_maps",
    "check_protocol",
    "ernst_angle",
    "flair",
    "flair_null_ti",
    "fse",
    "gre",
    "mprage",
    "rician_noise",
    "sample_protocol",
    "simulate",
]
