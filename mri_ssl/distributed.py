"""Where this process stands in a torch.distributed run (a single process counts as rank 0 of 1)."""

from __future__ import annotations

import warnings

import torch
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


def broadcast_from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank; every rank must call it. ``value`` when not
    distributed. Under NCCL the object travels through the current CUDA device (``torch.cuda.set_device`` first)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (rank order), keeping the autograd graph.

    Its backward returns to each rank the summed gradient that every rank's loss sent to that rank's rows, so an
    encoder also learns from the other ranks' anchors (used by NT-Xent and CLIP). Every rank must pass the same
    shape. Returns ``tensor`` itself when not distributed.
    """
    if world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather  # importable only where torch.distributed is

    # Recent torch (2.13) flags the differentiable gather as deprecated in favour of a private module; it still
    # works and is the public API across the supported range.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nn.functional.all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(tensor))


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks, detached (for logging the global loss); ``value`` when single-process."""
    world = world_size()
    if world == 1:
        return value.detach()
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world
