"""Fused (compiled) signal kernels with a silent eager fallback.

In eager mode every arithmetic step of a signal equation reads and writes a whole volume, so an equation with ten
steps moves ten volumes through memory. ``torch.compile`` fuses the steps into one loop that reads the maps once and
writes the image once. Compilation needs a working compiler tool chain (a C++ compiler on CPU, Triton on CUDA); where
it is missing or fails, the eager kernel runs instead and gives the same numbers, so callers never need to care.

Protocol values are passed as tensors, never Python floats: a compiled function specialises on Python numbers and
would recompile for every new protocol.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch

from mri_ssl.physics.sequences import KERNELS, MAP_ARGUMENTS, SPLIT_KERNELS

logger = logging.getLogger(__name__)

_compiled: dict[str, Callable] = {}
_failed: set[str] = set()

# Set MRI_SSL_DISABLE_COMPILE=1 to force the eager path (e.g. to debug, or on a machine without a compiler).
DISABLE_ENV = "MRI_SSL_DISABLE_COMPILE"


def compile_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0", "false", "False")


def run_kernel(sequence: str, *args: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Run the signal kernel of ``sequence`` on broadcastable tensors, compiled when possible.

    The first call per sequence compiles (tens of seconds on CPU); later calls reuse the compiled code. If
    compilation or the compiled call raises, the failure is logged at debug level, the sequence is marked as not
    compilable for this process, and the eager kernel's result is returned.
    """
    kernel = KERNELS[sequence]
    if not fused or compile_disabled() or sequence in _failed:
        return kernel(*args)
    if sequence in SPLIT_KERNELS:
        protocol_constants, kernel = SPLIT_KERNELS[sequence]
        n_maps = len(MAP_ARGUMENTS[sequence])
        args = (*args[:n_maps], *protocol_constants(*args[n_maps:]))
    try:
        compiled = _compiled.get(sequence)
        if compiled is None:
            compiled = torch.compile(kernel, dynamic=True, fullgraph=True)
            _compiled[sequence] = compiled
        return compiled(*args)
    except Exception as error:  # any compiler failure falls back; the maths is the same
        logger.debug("torch.compile of the %s kernel failed, using eager: %s", sequence, error)
        _failed.add(sequence)
        _compiled.pop(sequence, None)
        return kernel(*args)  # the (voxel) kernel on the prepared arguments, eagerly


def fused_available(sequence: str) -> bool:
    """True once ``sequence`` has a compiled kernel that ran; False if it fell back to eager or never ran."""
    return sequence in _compiled and sequence not in _failed
