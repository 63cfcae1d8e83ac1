"""Several label-free probes run as one in a trainer: one history, one log line, one ``score`` to choose on.

A pretraining run may be scored by more than one probe (the fundus bundle: the whole-image normal / abnormal probe
and the lesion-patch probe). ``ProbeSet`` measures each on the same weights (and the same random-init network) and
merges their figures into one record: the probe named ``""`` keeps its keys as they are (``auc``, ``accuracy``...,
so histories, tables and curves of a single probe read the same), every other probe's keys get its name as a prefix
(``lesion_auc``...). ``score``, what ``best.pt`` is chosen on, is the ``score`` of the probe named by ``select``.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from mri_ssl.errors import InputError
from mri_ssl.metrics.representation_probe import ProbeHandler


def prefixed(name: str, scores: Mapping[str, float]) -> dict[str, float]:
    """``scores`` with keys ``<name>_<key>`` (as they are for the name ``""``)."""
    return {(f"{name}_{key}" if name else key): value for key, value in scores.items()}


def unprefixed(name: str, scores: Mapping[str, float]) -> dict[str, float]:
    """The scores of the probe ``name`` out of a merged record (the inverse of ``prefixed`` on its own keys)."""
    if not name:
        return dict(scores)
    head = f"{name}_"
    return {key[len(head):]: value for key, value in scores.items() if key.startswith(head)}


class ProbeSet(ProbeHandler):
    """Run ``probes`` (name -> ``ProbeHandler``) as one probe; ``score`` is that of ``probes[select]``.

    Args:
        probes: the probes, in the order they run and are logged; at most one may be named ``""`` (its keys are not
            prefixed). Their own ``random_init_seed`` / ``interval`` / ``log_dir`` / ``history_path`` are not used:
            the set's are.
        select: the name of the probe whose ``score`` is the set's (what ``best.pt`` is chosen on).
        random_init_seed, interval, log_dir, history_path: as ``ProbeHandler``.
    """

    def __init__(self, probes: Mapping[str, ProbeHandler], select: str = "", random_init_seed: int = 999,
                 interval: int = 1, log_dir: str | os.PathLike | None = None,
                 history_path: str | os.PathLike | None = None):
        super().__init__(random_init_seed, interval, log_dir, history_path)
        if not probes:
            raise InputError("probes", "a probe set needs at least one probe")
        if select not in probes:
            raise InputError("select", f"must name one of the probes {list(probes)}, got {select!r}")
        self.probes = dict(probes)
        self.select = select

    def measure(self, network: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        merged: dict[str, float] = {}
        for name, probe in self.probes.items():
            merged.update(prefixed(name, probe.measure(network, device)))
        merged["score"] = merged[f"{self.select}_score" if self.select else "score"]
        return merged

    def describe(self, s: Mapping[str, float], r: Mapping[str, float]) -> str:
        lines = [probe.describe(unprefixed(name, s), unprefixed(name, r)) for name, probe in self.probes.items()]
        chosen = self.select or "unprefixed"
        return "; ".join(lines) + f"; score (what best.pt is chosen on): the {chosen} probe's, {s['score']:.4f}"


__all__ = ["ProbeSet", "prefixed", "unprefixed"]
