"""How much tissue contrast an acquisition leaves: the signals of CSF, grey and white matter under one protocol.

The paper's protocol distributions (``mri_ssl.physics.protocols``) are wide on purpose, and some draws leave the
brain almost flat: with log-uniform TR and TE, about a fifth of the FSE, GRE and FLAIR protocols put two of CSF, GM
and WM within 5 % of the brightest tissue's signal (MPRAGE about 4 %, and never GM against WM). An image like that
shows the head's outline but hardly any anatomy inside it, so a contrastive pair with such a view asks the encoder to
match anatomy it cannot see.

``tissue_contrast`` scores an acquisition by the smallest pairwise signal difference among the reference tissues,
relative to the brightest: ``min_{i<j} |S_i - S_j| / max_i S_i``, between 0 (two tissues indistinguishable, or no
signal at all) and 1/2 (three signals evenly spread from 0 to the maximum, the most any three can be apart). The
tissue values are the phantom's nominal 3 T values (``NOMINAL_TISSUE_PARAMETERS``: typical adult brain, so the score
says what the protocol does to a typical brain, not to one subject's maps).
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping, Sequence

import torch

from mri_ssl.errors import InputError
from mri_ssl.physics.phantom import NOMINAL_TISSUE_PARAMETERS
from mri_ssl.physics.simulate import DEFAULT_MAP_NAMES, check_map_names, simulate

REFERENCE_TISSUES = ("csf", "gm", "wm")
# The most the smallest pairwise gap of three signals in [0, max] can be, relative to max (0, max/2, max).
MAX_TISSUE_CONTRAST = 0.5
# Draws tried for an acquisition that reaches a ``min_tissue_contrast`` floor. At a floor of 0.1 about two in three
# FSE / GRE / FLAIR draws pass, so this many failures in a row mean the floor is out of reach of the distribution.
MAX_CONTRAST_DRAWS = 1000


def tissue_signals(sequence: str, protocol: Mapping, map_names: Sequence[str] = DEFAULT_MAP_NAMES,
                   tissues: Sequence[str] = REFERENCE_TISSUES) -> torch.Tensor:
    """The simulated signal ``(len(tissues),)`` (float64) of each tissue's nominal parameters under ``protocol``.

    ``map_names``: the maps the images are simulated from; only those parameters are used, exactly as ``simulate``
    uses the maps (e.g. without an ``r2`` map, R2* stands in for R2 in spin-echo sequences).
    """
    names = check_map_names(map_names)
    unknown = [t for t in tissues if t not in NOMINAL_TISSUE_PARAMETERS]
    if unknown or len(tissues) < 2:
        raise InputError("tissues", f"expected at least two of {', '.join(NOMINAL_TISSUE_PARAMETERS)}, got "
                                    f"{tuple(tissues)}")
    maps = {name: torch.tensor([NOMINAL_TISSUE_PARAMETERS[t][name] for t in tissues], dtype=torch.float64)
            for name in names}
    return simulate(maps, sequence, protocol, fused=False, validate=True)


def tissue_contrast(sequence: str, protocol: Mapping, map_names: Sequence[str] = DEFAULT_MAP_NAMES,
                    tissues: Sequence[str] = REFERENCE_TISSUES) -> float:
    """``min_{i<j} |S_i - S_j| / max_i S_i`` over the ``tissues``' simulated signals: 0 when two tissues look alike
    (or nothing gives signal), at most 1/2 for three tissues."""
    signals = tissue_signals(sequence, protocol, map_names, tissues)
    brightest = float(signals.max())
    if brightest <= 0.0:
        return 0.0
    gaps = [abs(float(a - b)) for a, b in itertools.combinations(signals, 2)]
    return min(gaps) / brightest


def check_min_tissue_contrast(value: float, name: str = "min_tissue_contrast") -> float:
    """``value`` as a float in [0, 1/2), or an ``InputError`` naming ``name``: a floor of 1/2 or more rejects every
    protocol (no three signals are further apart than that)."""
    try:
        floor = float(value)
    except (TypeError, ValueError):
        raise InputError(name, f"expected a number in [0, {MAX_TISSUE_CONTRAST}), got {value!r}") from None
    if not 0.0 <= floor < MAX_TISSUE_CONTRAST:
        raise InputError(name, f"expected a number in [0, {MAX_TISSUE_CONTRAST}) (the smallest tissue signal gap "
                               f"relative to the brightest tissue; 0 keeps every protocol), got {value!r}")
    return floor


def draw_with_tissue_contrast(draw: Callable[[], tuple[str, Mapping]], floor: float,
                              map_names: Sequence[str] = DEFAULT_MAP_NAMES,
                              what: str = "acquisitions") -> tuple[str, Mapping]:
    """``draw()`` (a ``(sequence, protocol)``) again until ``tissue_contrast`` reaches ``floor``; with ``floor`` 0 the
    first draw, with nothing more computed or drawn (the paper's draws, number for number). ``what`` names the draws
    in the error raised after ``MAX_CONTRAST_DRAWS`` failures in a row."""
    for _ in range(MAX_CONTRAST_DRAWS):
        sequence, protocol = draw()
        if floor <= 0.0 or tissue_contrast(sequence, protocol, map_names) >= floor:
            return sequence, protocol
    raise InputError("min_tissue_contrast", f"{MAX_CONTRAST_DRAWS} {what} in a row had a tissue contrast below "
                                            f"{floor:g}; that floor is out of reach: lower it (0 keeps every draw)")


__all__ = ["MAX_CONTRAST_DRAWS", "MAX_TISSUE_CONTRAST", "REFERENCE_TISSUES", "check_min_tissue_contrast",
           "draw_with_tissue_contrast", "tissue_contrast", "tissue_signals"]
