"""MONAI transforms that turn qMRI maps into a simulated MR image of a fixed or random sequence and protocol.

Array transforms take the maps stacked channel-first, ``(C, *spatial)``, one channel per name in ``map_names``, and
return ``(1, *spatial)`` (or ``(B, *spatial)`` for a batch of B protocols) as a ``MetaTensor`` whose metadata keep the
input's (affine included) and add ``sequence`` and ``protocol``. Dictionary wrappers read one map per key.
Noise, bias field, Gibbs ringing and dropout are MONAI's own transforms; these only add the physics.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends

from mri_ssl.errors import InputError
from mri_ssl.physics.protocols import (
    SEQUENCES,
    TYPICAL_PROTOCOLS,
    check_protocol,
    check_sequence,
    protocol_item,
    protocol_size,
    sample_protocol,
)
from mri_ssl.physics.simulate import DEFAULT_MAP_NAMES, check_map_names, simulate


__all__ = ["SimulateSequence", "SimulateSequenced", "RandSimulateSequence", "RandSimulateSequenced"]


def _protocol_metadata(protocol: Mapping) -> dict | list[dict]:
    items = [protocol_item(protocol, i) for i in range(protocol_size(protocol))]
    return items[0] if len(items) == 1 else items


def _simulate_stack(
    maps: torch.Tensor, map_names: tuple[str, ...], sequence: str, protocol: Mapping, fused: bool, validate: bool
) -> MetaTensor:
    maps_tensor = torch.as_tensor(maps)
    if maps_tensor.shape[0] != len(map_names):
        raise InputError("maps", f"expected {len(map_names)} channels {map_names}, got shape {tuple(maps.shape)}")
    as_float = maps_tensor.as_tensor() if isinstance(maps_tensor, MetaTensor) else maps_tensor
    if not as_float.is_floating_point():
        as_float = as_float.float()
    named = {name: as_float[i] for i, name in enumerate(map_names)}
    image = simulate(named, sequence, protocol, fused=fused, validate=validate)
    if image.ndim == as_float.ndim - 1:
        image = image.unsqueeze(0)
    meta = dict(maps.meta) if isinstance(maps, MetaTensor) else {}
    meta["sequence"] = sequence
    meta["protocol"] = _protocol_metadata(protocol)
    # The input's meta carry its affine (MetaTensor keeps it under "affine"), so the image stays in the same space.
    return MetaTensor(image, meta=meta)


class SimulateSequence(Transform):
    """Simulate one sequence with a fixed protocol from channel-first qMRI maps.

    Args:
        sequence: ``fse``, ``gre``, ``flair`` or ``mprage``.
        protocol: the sequence's parameters (seconds, radians; see ``PROTOCOL_PARAMETERS``); None for the typical
            3 T protocol in ``TYPICAL_PROTOCOLS``. 1-D tensors of length B give B output channels.
        map_names: the map in each input channel; must include pd, r1, r2s.
        fused: use the compiled kernel (see ``mri_ssl.physics.fused``).
        validate: check maps for NaN / range on every call (disable in training loops over checked data).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        sequence: str,
        protocol: Mapping | None = None,
        map_names: Sequence[str] = DEFAULT_MAP_NAMES,
        fused: bool = False,
        validate: bool = True,
    ) -> None:
        self.sequence = check_sequence(sequence)
        self.protocol = dict(TYPICAL_PROTOCOLS[self.sequence] if protocol is None else protocol)
        check_protocol(self.sequence, self.protocol)  # fail at construction, before any data are read
        self.map_names = check_map_names(map_names)
        self.fused = fused
        self.validate = validate

    def __call__(self, maps: torch.Tensor) -> MetaTensor:
        """``maps``: ``(C, *spatial)``; returns ``(1, *spatial)`` or ``(B, *spatial)``."""
        return _simulate_stack(maps, self.map_names, self.sequence, self.protocol, self.fused, self.validate)


class RandSimulateSequence(Randomizable, Transform):
    """Simulate a randomly chosen sequence with a random protocol drawn by ``sample_protocol``.

    Each call draws a sequence from ``sequences`` (with ``sequence_probs``, uniform by default, as in the paper) and a
    physically consistent protocol. ``set_random_state`` makes the draws reproducible.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        sequences: Sequence[str] = SEQUENCES,
        sequence_probs: Sequence[float] | None = None,
        map_names: Sequence[str] = DEFAULT_MAP_NAMES,
        fused: bool = False,
        validate: bool = True,
    ) -> None:
        self.sequences = tuple(check_sequence(s) for s in sequences)
        if not self.sequences:
            raise InputError("sequences", "at least one sequence is needed")
        if sequence_probs is None:
            probs = np.full(len(self.sequences), 1.0 / len(self.sequences))
        else:
            probs = np.asarray(sequence_probs, dtype=np.float64)
            if probs.shape != (len(self.sequences),) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
                raise InputError("sequence_probs", f"need {len(self.sequences)} non-negative numbers summing to 1, "
                                                   f"got {list(sequence_probs)}")
        self.sequence_probs = probs
        self.map_names = check_map_names(map_names)
        self.fused = fused
        self.validate = validate
        self.sequence: str = self.sequences[0]
        self.protocol: dict = {}

    def randomize(self, data=None) -> None:
        """Draw a sequence (with ``sequence_probs``), then its protocol."""
        self.randomize_sequence()
        self.randomize_protocol()

    def randomize_sequence(self) -> None:
        """Draw the sequence (with ``sequence_probs``); its protocol is drawn by ``randomize_protocol``."""
        self.sequence = str(self.R.choice(self.sequences, p=self.sequence_probs))

    def randomize_protocol(self) -> None:
        """Draw a new protocol for the current sequence (the sequence is kept)."""
        # sample_protocol draws from a torch.Generator; seed it from MONAI's numpy state so set_random_state governs.
        generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))
        self.protocol = {k: v[0] for k, v in sample_protocol(self.sequence, 1, generator).items()}

    def __call__(self, maps: torch.Tensor, randomize: bool = True) -> MetaTensor:
        if randomize or not self.protocol:
            self.randomize()
        return _simulate_stack(maps, self.map_names, self.sequence, self.protocol, self.fused, self.validate)


def _stack_maps(data: Mapping, keys: Sequence[Hashable]) -> torch.Tensor:
    """Stack maps stored one per key, each ``(*spatial)`` or channel-first ``(1, *spatial)``, into ``(C, *spatial)``."""
    first = data[keys[0]]
    channels = []
    for key in keys:
        value = data[key]
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        # A leading axis of length 1 is MONAI's channel axis (EnsureChannelFirstd); otherwise add one.
        channels.append(value if value.shape[0] == 1 else value.unsqueeze(0))
    try:
        stacked = torch.cat(channels, dim=0)
    except RuntimeError as error:
        shapes = {str(k): tuple(data[k].shape) for k in keys}
        raise InputError("maps", f"map shapes differ: {shapes}") from error
    if isinstance(first, MetaTensor) and not isinstance(stacked, MetaTensor):
        stacked = MetaTensor(stacked, affine=first.affine, meta=dict(first.meta))
    return stacked


class _SimulateMapBase(MapTransform):
    def __init__(self, keys: KeysCollection, map_names: Sequence[str] | None, output_key: str,
                 allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.map_names_by_key = dict(zip(self.keys, map_names if map_names is not None else self.keys))
        self.output_key = output_key

    def _stacked_maps(self, data: Mapping) -> torch.Tensor:
        """The maps present in ``data`` stacked channel-first; the simulator is told which map each channel is."""
        present = list(self.key_iterator(data))
        self.simulator.map_names = check_map_names([str(self.map_names_by_key[k]) for k in present])
        return _stack_maps(data, present)


class SimulateSequenced(_SimulateMapBase):
    """Dictionary wrapper of ``SimulateSequence``: maps read from ``keys``, the image written to ``output_key``.

    Args:
        keys: data keys holding the maps; by default each key is also the map's name (``pd``, ``r1``, ``r2s``, ...).
        map_names: the map name of each key when keys are named otherwise.
        output_key: where the simulated image goes.
        allow_missing_keys: let optional maps (``r2``, ``mt``) be absent.
    """

    def __init__(
        self,
        keys: KeysCollection = DEFAULT_MAP_NAMES,
        sequence: str = "mprage",
        protocol: Mapping | None = None,
        map_names: Sequence[str] | None = None,
        output_key: str = "image",
        fused: bool = False,
        validate: bool = True,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, map_names, output_key, allow_missing_keys)
        self.simulator = SimulateSequence(sequence, protocol, tuple(self.map_names_by_key.values()), fused, validate)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d[self.output_key] = self.simulator(self._stacked_maps(d))
        return d


class RandSimulateSequenced(Randomizable, _SimulateMapBase):
    """Dictionary wrapper of ``RandSimulateSequence``; see ``SimulateSequenced`` for the key arguments."""

    def __init__(
        self,
        keys: KeysCollection = DEFAULT_MAP_NAMES,
        sequences: Sequence[str] = SEQUENCES,
        sequence_probs: Sequence[float] | None = None,
        map_names: Sequence[str] | None = None,
        output_key: str = "image",
        fused: bool = False,
        validate: bool = True,
        allow_missing_keys: bool = True,
    ) -> None:
        _SimulateMapBase.__init__(self, keys, map_names, output_key, allow_missing_keys)
        self.simulator = RandSimulateSequence(
            sequences, sequence_probs, tuple(self.map_names_by_key.values()), fused, validate
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.simulator.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.simulator.randomize()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        maps = self._stacked_maps(d)
        self.randomize()
        d[self.output_key] = self.simulator(maps, randomize=False)
        return d
