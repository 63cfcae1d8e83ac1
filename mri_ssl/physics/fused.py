"""Fused (compiled) signal kernels with a silent eager fallback, writing into a fresh or a caller's output.

In eager mode every arithmetic step of a signal equation reads and writes a whole volume, so an equation with ten
steps moves ten volumes through memory. ``torch.compile`` fuses the steps into one loop that reads the maps once and
writes the image once. Compilation needs a working compiler tool chain (a C++ compiler on CPU, Triton on CUDA); where
it is missing or fails, the eager kernel runs instead and gives the same numbers, so callers never need to care.

Protocol values are passed as tensors, never Python floats: a compiled function specialises on Python numbers and
would recompile for every new protocol.

Batches of protocols on CPU
    B protocols from one set of maps give a ``(B, *map_shape)`` image. Computed as B whole-volume passes (the order a
    plain broadcast gives), every map is streamed from memory B times, exactly as B separate calls would stream it.
    Instead the compiled loop runs over blocks of ``CPU_CHUNK_VOXELS`` voxels (outer, split between threads), then
    protocols, then the voxels of the block: a block of each map (64 KiB) is
    read from memory once and stays in the core's cache while all B protocols are written. The output layout is the
    ordinary contiguous ``(B, *map_shape)``; only the order in which its elements are written changes.
    Measured on the 2-core EPYC this was written on (busy, shared): no gain over the whole-volume order within noise
    (batched out= time blocked / whole-volume 0.85-1.13 over three runs): there the fused kernels are bound by
    arithmetic (with one thread, the same user CPU time per voxel and protocol batched or separate, e.g. FSE 68 vs
    71 ms for 8). It is kept for machines with more cores per memory channel, and ``benchmarks/simulator.py`` prints
    the comparison (``blocked/whole``) so it can be checked, or dropped, anywhere.

Without autograd, the compiled function writes straight into its output (``out=`` when the caller gives one), and
takes the magnitude in the same loop when asked, so ``simulate`` makes one pass over the image, not two.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Callable

import torch

from mri_ssl.errors import InputError
from mri_ssl.physics.sequences import KERNELS, MAP_ARGUMENTS, SPLIT_KERNELS

logger = logging.getLogger(__name__)

# Compiled functions: key ``sequence`` -> the writing function taking the magnitude (what ``simulate`` uses, no
# autograd), ``sequence/signal`` -> the same for the signed signal, ``sequence/autograd`` -> the kernel returning a
# fresh, differentiable result.
_compiled: dict[str, Callable] = {}
_failed: set[str] = set()

# Set MRI_SSL_DISABLE_COMPILE=1 to force the eager path (e.g. to debug, or on a machine without a compiler).
DISABLE_ENV = "MRI_SSL_DISABLE_COMPILE"

# Voxels per block of the CPU loop order (see the module docstring): 64 KiB of each float32 map, so the 3-4 map
# blocks fit in a 1 MiB L2 cache with room for the output lines being written. Measured on a 2-core EPYC
# (192x224x192 maps, 8 protocols): 4096, 16384 and 65536 give the same time within noise.
CPU_CHUNK_VOXELS = 16384


def compile_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0", "false", "False")


def _write_function(sequence: str, magnitude: bool) -> Callable:
    """``write(out, *kernel_args)``: ``out.copy_(kernel(*args))`` (or its magnitude), a function to compile.

    Each (sequence, magnitude) gets its own code object: dynamo caches compiled graphs per code object with a
    recompile limit, which the sequences must not share.
    """
    kernel = KERNELS[sequence]
    if sequence in SPLIT_KERNELS:
        kernel = SPLIT_KERNELS[sequence][1]

    if magnitude:
        def write(out, *args):
            out.copy_(torch.abs(kernel(*args)))
    else:
        def write(out, *args):
            out.copy_(kernel(*args))
    name = f"write_{sequence}_{'magnitude' if magnitude else 'signal'}"
    write.__code__ = write.__code__.replace(co_name=name)
    write.__name__ = write.__qualname__ = name
    return write


def _needs_autograd(args) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def check_out(out: torch.Tensor, shape: torch.Size, dtype: torch.dtype, device: torch.device, autograd: bool) -> None:
    """Raise ``InputError`` naming ``out`` unless it can receive a result of this shape, dtype and device."""
    if not isinstance(out, torch.Tensor):
        raise InputError("out", f"must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise InputError("out", f"has shape {tuple(out.shape)}, expected {tuple(shape)} (the maps' shape, with the "
                                f"number of protocols in front for a batch)")
    if out.dtype != dtype:
        raise InputError("out", f"has dtype {out.dtype}, expected {dtype} (the maps' dtype)")
    if out.device != device:
        raise InputError("out", f"is on {out.device}, expected {device} (the maps' device)")
    if not out.is_contiguous():
        raise InputError("out", "must be contiguous (e.g. allocated with torch.empty)")
    if autograd or out.requires_grad:
        raise InputError("out", "cannot be used with autograd (maps, protocol values or out require grad); call "
                                "without out= to get a fresh, differentiable result")


def _blocked_views(out: torch.Tensor, args: tuple, block: int):
    """Aliases of ``out`` and the kernel arguments for the blocked loop order, or None where the layout does not fit.

    The arguments must be 0-d tensors, maps of one shape S, and (for a batch of B) protocol tensors of shape
    ``(B, 1, ..., 1)``, with ``out`` of shape S or ``(B, *S)``. Returns a list of ``(out_view, args_views)``: the
    whole blocks as ``(blocks, B, block)`` views (maps ``(blocks, 1, block)``, protocols ``(1, B, 1)``) and, when the
    voxel count is not a multiple of ``block``, the remainder as one more block.
    """
    shape = tuple(out.shape)
    shaped = [tuple(a.shape) for a in args if a.ndim > 0]
    if all(s == shape for s in shaped):
        batch, map_shape = 1, shape
    elif len(shape) >= 1:
        batch, map_shape = shape[0], shape[1:]
        protocol_shape = (batch,) + (1,) * len(map_shape)
        if not all(s in (map_shape, protocol_shape) for s in shaped) or map_shape == protocol_shape:
            return None
    else:
        return None
    voxels = math.prod(map_shape)
    if voxels == 0:
        return None
    block = min(block, voxels)
    whole = voxels // block * block

    def views(start: int, stop: int, blocks: int):
        width = (stop - start) // blocks
        out_view = _alias(out, (blocks, batch, width), (width, voxels, 1), out.storage_offset() + start)
        arg_views = []
        for a in args:
            if a.ndim == 0:
                arg_views.append(a.clone() if a._is_view() else a)
                continue
            a = a.contiguous()
            if tuple(a.shape) == map_shape:
                arg_views.append(_alias(a, (blocks, 1, width), (width, width, 1), a.storage_offset() + start))
            else:  # protocol values (B, 1, ..., 1) -> (1, B, 1)
                arg_views.append(_alias(a, (1, batch, 1), (batch, 1, 1), a.storage_offset()))
        return out_view, tuple(arg_views)

    parts = [views(0, whole, whole // block)]
    if whole < voxels:
        parts.append(views(whole, voxels, 1))
    return parts


def _alias(tensor: torch.Tensor, size, stride, offset: int) -> torch.Tensor:
    """A tensor on ``tensor``'s memory with the given geometry that is not a *view* in autograd's sense.

    Dynamo guards on the base tensor of a view argument (its shape, and equalities between its sizes), so passing
    views of the caller's maps and buffers would recompile for every new base shape. ``set_`` shares the memory
    without recording a base. Only used where no autograd is involved.
    """
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(tensor.untyped_storage(), offset, size,
                                                                         stride)


def run_kernel(
    sequence: str,
    *args: torch.Tensor,
    fused: bool = True,
    out: torch.Tensor | None = None,
    magnitude: bool = False,
) -> torch.Tensor:
    """Run the signal kernel of ``sequence`` on broadcastable tensors, compiled when possible.

    Args:
        sequence: a key of ``KERNELS``.
        args: the kernel's arguments (maps, protocol values, b1) as tensors of one dtype and device, as
            ``as_protocol_batch`` prepares them.
        fused: use the compiled kernel. The first call per sequence compiles (tens of seconds on CPU); later calls
            reuse the compiled code. If compilation or the compiled call raises, the failure is logged at debug
            level, the sequence is marked as not compilable for this process, and the eager kernel's result is
            returned.
        out: a contiguous tensor of the result's shape, dtype and device to write into and return (e.g. one
            buffer refilled every step of a training loop, which saves allocating, and on CPU page-faulting, a new
            image each call). Not with autograd. Anything else raises ``InputError`` naming ``out``.
        magnitude: return ``|signal|`` (what ``simulate`` returns) instead of the signed signal.
    """
    kernel = KERNELS[sequence]
    autograd = _needs_autograd(args)
    shape = torch.broadcast_shapes(*(a.shape for a in args))
    if out is not None:
        check_out(out, shape, args[0].dtype, args[0].device, autograd)
    if not fused or compile_disabled() or sequence in _failed:
        return _eager(kernel, args, out, magnitude)
    if sequence in SPLIT_KERNELS:
        protocol_constants, kernel = SPLIT_KERNELS[sequence]
        n_maps = len(MAP_ARGUMENTS[sequence])
        args = (*args[:n_maps], *protocol_constants(*args[n_maps:]))
    try:
        if autograd:
            return _compiled_kernel(f"{sequence}/autograd", kernel, args, magnitude)
        result = out if out is not None else torch.empty(shape, dtype=args[0].dtype, device=args[0].device)
        key = sequence if magnitude else f"{sequence}/signal"
        write = _compiled.get(key)
        if write is None:
            write = torch.compile(_write_function(sequence, magnitude), dynamic=True, fullgraph=True)
            _compiled[key] = write
        # Blocked loop order on CPU only: on a GPU the maps are not re-read from a small cache in the same way, and
        # the whole-volume order (one block) is what a broadcast gives.
        block = CPU_CHUNK_VOXELS if result.device.type == "cpu" else sys.maxsize
        parts = _blocked_views(result, args, block)
        if parts is None:
            write(result, *args)
        else:
            for out_view, arg_views in parts:
                write(out_view, *arg_views)
        return result
    except Exception as error:  # any compiler failure falls back; the maths is the same
        logger.debug("torch.compile of the %s kernel failed, using eager: %s", sequence, error)
        _failed.add(sequence)
        for key in [k for k in _compiled if k.split("/")[0] == sequence]:
            _compiled.pop(key)
        return _eager(kernel, args, out, magnitude)  # the (voxel) kernel on the prepared arguments, eagerly


def _compiled_kernel(key: str, kernel: Callable, args: tuple, magnitude: bool) -> torch.Tensor:
    """The compiled kernel returning a fresh, differentiable result (the autograd path)."""
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = torch.compile(kernel, dynamic=True, fullgraph=True)
        _compiled[key] = compiled
    signal = compiled(*args)
    return signal.abs() if magnitude else signal


def _eager(kernel: Callable, args: tuple, out: torch.Tensor | None, magnitude: bool) -> torch.Tensor:
    signal = kernel(*args)
    if out is not None:
        return torch.abs(signal, out=out) if magnitude else out.copy_(signal)
    if not magnitude:
        return signal
    # In place where autograd allows it: a second full-size allocation costs about 40 % of a fused kernel.
    return signal.abs() if signal.requires_grad else signal.abs_()


def fused_available(sequence: str) -> bool:
    """True once ``sequence`` has a compiled kernel that ran; False if it fell back to eager or never ran."""
    return sequence not in _failed and any(k.split("/")[0] == sequence for k in _compiled)
