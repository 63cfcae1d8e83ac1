"""Channels-last (NDHWC) memory layout for the 3-D networks: one policy for every network that uses it.

oneDNN runs 3-D convolutions, forward and backward, on channels-last tensors without converting layouts. Measured on
one CPU thread: the CPU demo's tissue network (batch 2 of 32^3, slim features) 0.138 s per training step against
0.184 s contiguous, and 2.41 s against 2.98 s for the sliding-window inference of one 99x117x95 volume; the
pretraining model step (benchmarks/pretrain_pipeline.py, batch 8 pairs of 32^3) 0.554 s against 0.673 s. The same
sums; only the memory order, and so the rounding, differs (and element-wise dropout, which draws its mask in memory
order, draws other masks). load_state_dict copies values, so checkpoints load into either layout (safetensors are
written contiguous).
"""

from __future__ import annotations

import torch
from torch import nn


def keep_channels_last(module: nn.Module, spatial_dims: int, enabled: bool = True) -> bool:
    """Convert ``module``'s 5-D weights to channels-last when ``enabled`` and the network is 3-D; return whether it
    did (what ``channels_last_input`` then needs)."""
    use = bool(enabled) and spatial_dims == 3
    if use:
        module.to(memory_format=torch.channels_last_3d)
    return use


def channels_last_input(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``x`` in the channels-last layout when ``enabled`` and it is 5-D (a 3-D batch), else ``x`` unchanged."""
    if enabled and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
