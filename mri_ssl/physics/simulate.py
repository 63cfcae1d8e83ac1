"""Simulate an MR image of a given sequence and protocol from a set of quantitative MRI maps."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from mri_ssl.errors import InputError
from mri_ssl.physics.fused import run_kernel
from mri_ssl.physics.protocols import PROTOCOL_PARAMETERS, check_protocol, check_sequence
from mri_ssl.physics.sequences import MAP_ARGUMENTS, PROTOCOL_ARGUMENTS, as_protocol_batch

MAP_NAMES = ("pd", "r1", "r2s", "r2", "mt", "b1")
REQUIRED_MAPS = ("pd", "r1", "r2s")
# The maps transforms read when not told otherwise: the four the sequence-invariant paper's qMRI data hold.
DEFAULT_MAP_NAMES = ("pd", "r1", "r2s", "mt")

# The physical range of each map: (lowest allowed, highest allowed or None, sentence for errors).
MAP_RANGES = {
    "pd": (0.0, None, "proton density must be >= 0"),
    "r1": (0.0, None, "R1 (1/s) must be >= 0"),
    "r2s": (0.0, None, "R2* (1/s) must be >= 0"),
    "r2": (0.0, None, "R2 (1/s) must be >= 0"),
    "mt": (0.0, 1.0, "MT saturation must be a fraction in [0, 1) (divide a map in percent units by 100)"),
    "b1": (0.0, None, "the receive field must be >= 0"),
}


def check_map_names(map_names: Sequence[str] | str, source: str = "map_names") -> tuple[str, ...]:
    """Return the names as a tuple, or raise ``InputError`` (naming ``source``) for an unknown, missing or repeated
    map name; for transforms that receive maps stacked as channels and must be told which channel is which."""
    names = (map_names,) if isinstance(map_names, str) else tuple(map_names)
    unknown = [n for n in names if n not in MAP_NAMES]
    if unknown:
        raise InputError(source, f"unknown map name {unknown[0]!r}; expected some of {', '.join(MAP_NAMES)}")
    missing = [n for n in REQUIRED_MAPS if n not in names]
    if missing:
        raise InputError(source, f"{', '.join(missing)} is required; got {names} (simulation needs "
                                 f"{', '.join(REQUIRED_MAPS)})")
    if len(set(names)) != len(names):
        raise InputError(source, f"a map name appears twice in {names}")
    return names


def check_maps(maps: Mapping[str, torch.Tensor], spatial_dims: int | None = 3) -> dict[str, float]:
    """Raise ``InputError`` naming the map and the problem if the maps cannot be simulated from.

    Checks: pd, r1 and r2s present; no unknown names; every map finite and within its physical range; all maps of
    one shape; ``spatial_dims`` dimensions when given (2-D maps where 3-D are expected are an error).

    Returns:
        The largest value of each non-empty map, which the check finds anyway; ``simulate`` passes those of the
        rate maps on, so that the eager kernels skip clamping exponents that cannot reach the floor.
    """
    largest_values = {}
    unknown = sorted(set(maps) - set(MAP_NAMES))
    if unknown:
        raise InputError(unknown[0], f"unknown map name; expected some of {', '.join(MAP_NAMES)}")
    for name in REQUIRED_MAPS:
        if name not in maps:
            raise InputError(name, f"map is missing; simulation needs {', '.join(REQUIRED_MAPS)} (r2 and mt optional)")
    shape = None
    for name, values in maps.items():
        values = torch.as_tensor(values)
        if spatial_dims is not None and values.ndim != spatial_dims:
            raise InputError(name, f"map has {values.ndim} dimensions {tuple(values.shape)}, expected {spatial_dims}")
        if shape is None:
            shape = (name, tuple(values.shape))
        elif tuple(values.shape) != shape[1]:
            raise InputError(name, f"map shape {tuple(values.shape)} differs from {shape[0]} shape {shape[1]}")
        if not values.is_floating_point():
            values = values.double()
        if values.numel() == 0:
            continue
        # One pass over the map for the usual, valid case: NaN propagates into aminmax and +-Inf shows as an
        # extreme, so finite extremes inside the range prove every voxel is. The counts for the message take more
        # passes and boolean volumes (checking four 192x224x192 maps that way took 104 ms, against 5 ms), so they
        # are only taken on failure.
        smallest, largest = (float(v) for v in torch.aminmax(values.detach()))
        low, high, sentence = MAP_RANGES[name]
        if not (math.isfinite(smallest) and math.isfinite(largest)):
            count = int((~torch.isfinite(values)).sum())
            raise InputError(name, f"map has {count} non-finite voxel(s) (NaN or Inf)")
        if smallest < low or (high is not None and largest >= high):
            bad = values < low if high is None else (values < low) | (values >= high)
            value = float(values[bad].flatten()[0])
            raise InputError(name, f"{sentence}; found {int(bad.sum())} voxel(s) outside, e.g. {value:.6g}")
        largest_values[name] = largest
    return largest_values


def simulate(
    maps: Mapping[str, torch.Tensor],
    sequence: str,
    protocol: Mapping,
    *,
    fused: bool | None = None,
    validate: bool = True,
    spatial_dims: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Simulate the magnitude image of ``sequence`` with ``protocol`` from qMRI ``maps``.

    Args:
        maps: ``pd``, ``r1`` (1/s), ``r2s`` (1/s) and optionally ``r2`` (1/s), ``mt`` (fraction) and ``b1``
            (receive field), tensors of one shape on one device. Spin-echo sequences (FSE, FLAIR) need R2; where
            no ``r2`` map is given, R2* stands in for it, as the reference work did (R2* >= R2, so spin-echo images
            come out somewhat more T2-weighted than a real scanner's). GRE uses ``mt`` when given.
        sequence: ``fse``, ``gre``, ``flair`` or ``mprage``.
        protocol: parameters as ``PROTOCOL_PARAMETERS[sequence]`` lists them; floats for one protocol, or 1-D
            tensors of length B for a batch of B protocols (as ``sample_protocol`` returns them).
        fused: True: the compiled kernel (``mri_ssl.physics.fused``; the first call of a sequence compiles, seconds on
            CPU), falling back to eager silently where compiling fails; False: eager (in place when no gradient is
            needed); None (default): eager until this process has spent ``fused.AUTO_COMPILE_AFTER_S`` seconds in
            eager calls of the sequence, compiled from then on, so one-off calls never compile and a training loop
            compiles once.
        validate: check maps and protocol first (``check_maps``, ``check_protocol``); pass False in a training
            loop whose data were checked once.
        spatial_dims: when given, the number of dimensions every map must have.
        out: a contiguous tensor of the result's shape, dtype (the maps') and device to write the image into, e.g.
            one buffer a training loop refills every step instead of allocating (and, on CPU, page-faulting) a new
            image each call; ``out`` is returned. Not with autograd. A wrong shape, dtype or device raises
            ``InputError`` naming ``out``. It must not share memory with the maps.

    Returns:
        The magnitude image, shape ``map_shape`` for one protocol given as scalars, or ``(B, *map_shape)`` for B;
        a new tensor unless ``out`` is given.
    """
    sequence = check_sequence(sequence)
    largest_values = None
    if validate:
        largest_values = check_maps(maps, spatial_dims=spatial_dims)
        largest_values.setdefault("r2", largest_values.get("r2s"))
        check_protocol(sequence, protocol)
    else:
        missing = [k for k in PROTOCOL_PARAMETERS[sequence] if k not in protocol]
        if missing:
            check_protocol(sequence, protocol)
    available = dict(maps)
    available.setdefault("r2", available["r2s"])
    available.setdefault("mt", 0.0)
    # b1 is a map (or 1.0), so it goes with the maps: a protocol batch must never be confused with a b1 map.
    map_values = tuple(available[name] for name in MAP_ARGUMENTS[sequence]) + (available.get("b1", 1.0),)
    params = tuple(protocol[name] for name in PROTOCOL_ARGUMENTS[sequence])
    map_values, params = as_protocol_batch(map_values, params)
    *map_values, b1 = map_values
    return run_kernel(sequence, *map_values, *params, b1, fused=fused, out=out, magnitude=True,
                      checked_maxima=largest_values)
