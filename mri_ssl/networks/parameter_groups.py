"""Optimizer parameter groups of a network made of parts that train at different rates (e.g. a pretrained encoder
fine-tuned more slowly than the decoder or head trained from scratch)."""

from __future__ import annotations

from typing import Sequence

from torch import nn


def parameter_groups_by_part(model: nn.Module, learning_rate: float, rest_name: str,
                             parts: Sequence[tuple[str, nn.Module, float]]) -> list[dict]:
    """The trainable parameters of ``model`` in named groups: each of ``parts`` (name, submodule, rate) at its rate,
    everything else (``rest_name``) at ``learning_rate``, the rest's group first. A part with no trainable
    parameter (a frozen encoder) gets no group; each parameter is in one group."""
    taken = {id(parameter) for _, module, _ in parts for parameter in module.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [{"params": rest, "lr": float(learning_rate), "name": rest_name}]
    for name, module, rate in parts:
        trainable = [p for p in module.parameters() if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": float(rate), "name": name})
    return groups


__all__ = ["parameter_groups_by_part"]
