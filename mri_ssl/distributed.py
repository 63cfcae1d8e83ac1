"""Where this process stands in a torch.distributed run (a single process counts as rank 0 of 1)."""

from __future__ import annotations

import torch.distributed as dist


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes of the default group, 1 when torch.distributed is absent or not initialised."""
    return dist.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in the default group, 0 when not distributed."""
    return dist.get_rank() if _initialised() else 0


def is_main_process() -> bool:
    """True on rank 0: the process that writes files and draws progress bars."""
    return rank() == 0
