"""Fused (compiled) signal kernels with a silent eager fallback, writing into a fresh or a caller's output.

In eager mode every arithmetic step of a signal equation reads and writes a whole volume, so an equation with ten
steps moves ten volumes through memory. ``torch.compile`` fuses the steps into one loop that reads the maps once and
writes the image once. Compilation needs a working compiler tool chain (a C++ compiler on CPU, Triton on CUDA); where
it is missing or fails, the eager kernel runs instead and gives the same numbers, so callers never need to care.

Protocol values are passed as tensors, never Python floats: a compiled function specialises on Python numbers and
would recompile for every new protocol.

When the compiled kernel is used
    ``fused=True`` compiles on the first call of each kernel variant (sequence; magnitude or signed; with or without
    autograd), ``fused=False`` never does. The default, ``fused=None``, follows a rent-or-buy rule: it runs the eager
    kernels and adds up the seconds they take per variant in this process; once that total reaches
    ``AUTO_COMPILE_AFTER_S`` (about what one compile costs on CPU), it compiles and uses the compiled kernel from then
    on. A one-off call, or a test on small volumes, never pays a compile; a training loop pays it once, after
    spending at most as long again in eager calls, so it is never more than about twice as slow as the better choice
    made in hindsight. On CUDA, eager calls return before the GPU finishes, so the rule sees only launch time and
    compiles late or never: pass ``fused=True`` there for long runs.

Without autograd, the compiled function writes straight into its output (``out=`` when the caller gives one), and
takes the magnitude in the same loop when asked, so ``simulate`` makes one pass over the image, not two.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Mapping

import torch

from mri_ssl.errors import InputError
from mri_ssl.physics.inplace import INPLACE_KERNELS
from mri_ssl.physics.sequences import KERNELS, MAP_ARGUMENTS, SPLIT_KERNELS

logger = logging.getLogger(__name__)

# Compiled functions: key ``sequence`` -> the writing function taking the magnitude (what ``simulate`` uses, no
# autograd), ``sequence/signal`` -> the same for the signed signal, ``sequence/autograd`` -> the kernel returning a
# fresh, differentiable result.
_compiled: dict[str, Callable] = {}
_failed: set[str] = set()

# Set MRI_SSL_DISABLE_COMPILE=1 to force the eager path (e.g. to debug, or on a machine without a compiler).
DISABLE_ENV = "MRI_SSL_DISABLE_COMPILE"

# Eager seconds per kernel variant after which ``fused=None`` compiles: the cold first-call compile of the FSE kernel
# on a quiet 2-core CPU (3.8 s), rounded up. ``benchmarks/simulator.py`` prints the compile seconds of each kernel;
# on a loaded machine or with a cold inductor start-up they are several times longer, with a warm cache shorter.
AUTO_COMPILE_AFTER_S = 4.0
_eager_seconds: dict[str, float] = {}


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


def run_kernel(
    sequence: str,
    *args: torch.Tensor,
    fused: bool | None = None,
    out: torch.Tensor | None = None,
    magnitude: bool = False,
    checked_maxima: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """Run the signal kernel of ``sequence`` on broadcastable tensors, eagerly or compiled.

    Args:
        sequence: a key of ``KERNELS``.
        args: the kernel's arguments (maps, protocol values, b1) as tensors of one dtype and device, as
            ``as_protocol_batch`` prepares them.
        fused: True: the compiled kernel (the first call per variant compiles, seconds on CPU); False: eager;
            None: eager until this variant's eager calls have taken ``AUTO_COMPILE_AFTER_S`` in this process, then
            compiled (see the module docstring). If compilation or the compiled call raises, the failure is logged
            at debug level, the sequence is marked as not compilable for this process, and the eager result is
            returned. Without autograd, eager means the in-place kernels of ``mri_ssl.physics.inplace``.
        out: a contiguous tensor of the result's shape, dtype and device to write into and return (e.g. one
            buffer refilled every step of a training loop, which saves allocating, and on CPU page-faulting, a new
            image each call). Not with autograd. Anything else raises ``InputError`` naming ``out``.
        magnitude: return ``|signal|`` (what ``simulate`` returns) instead of the signed signal.
        checked_maxima: only for maps and a protocol that ``check_maps`` and ``check_protocol`` passed: the largest
            value of each rate map, by kernel argument name (``r1``, ``r2``, ``r2s``). The in-place kernels then
            skip clamps that cannot act and magnitudes that cannot change the signal.
    """
    autograd = _needs_autograd(args)
    shape = torch.broadcast_shapes(*(a.shape for a in args))
    if out is not None:
        check_out(out, shape, args[0].dtype, args[0].device, autograd)
    key = f"{sequence}/autograd" if autograd else (sequence if magnitude else f"{sequence}/signal")
    if fused is False or compile_disabled() or sequence in _failed:
        return _eager(sequence, args, shape, out, magnitude, autograd, checked_maxima)
    if fused is None and key not in _compiled and _eager_seconds.get(key, 0.0) < AUTO_COMPILE_AFTER_S:
        start = time.perf_counter()
        result = _eager(sequence, args, shape, out, magnitude, autograd, checked_maxima)
        _eager_seconds[key] = _eager_seconds.get(key, 0.0) + time.perf_counter() - start
        return result
    kernel, prepared = KERNELS[sequence], args
    if sequence in SPLIT_KERNELS:
        protocol_constants, kernel = SPLIT_KERNELS[sequence]
        n_maps = len(MAP_ARGUMENTS[sequence])
        prepared = (*args[:n_maps], *protocol_constants(*args[n_maps:]))
    try:
        if autograd:
            compiled = _compiled.get(key)
            if compiled is None:
                compiled = _compiled[key] = torch.compile(kernel, dynamic=True, fullgraph=True)
            signal = compiled(*prepared)
            return signal.abs() if magnitude else signal
        write = _compiled.get(key)
        if write is None:
            write = _compiled[key] = torch.compile(_write_function(sequence, magnitude), dynamic=True, fullgraph=True)
        result = out if out is not None else torch.empty(shape, dtype=args[0].dtype, device=args[0].device)
        write(result, *prepared)
        return result
    except Exception as error:  # any compiler failure falls back; the maths is the same
        logger.debug("torch.compile of the %s kernel failed, using eager: %s", sequence, error)
        _failed.add(sequence)
        for stale in [k for k in _compiled if k.split("/")[0] == sequence]:
            _compiled.pop(stale)
        return _eager(sequence, args, shape, out, magnitude, autograd, checked_maxima)


def _eager(sequence: str, args: tuple, shape: torch.Size, out: torch.Tensor | None, magnitude: bool,
           autograd: bool, checked_maxima: Mapping[str, float] | None = None) -> torch.Tensor:
    """The functional kernel where autograd needs it (or no in-place kernel exists), else the in-place one."""
    if autograd or sequence not in INPLACE_KERNELS:
        signal = KERNELS[sequence](*args)
        if out is not None:
            return torch.abs(signal, out=out) if magnitude else out.copy_(signal)
        if not magnitude:
            return signal
        return signal.abs() if signal.requires_grad else signal.abs_()
    if out is None:
        out = torch.empty(shape, dtype=args[0].dtype, device=args[0].device)
    return INPLACE_KERNELS[sequence](out, *args, magnitude=magnitude, checked_maxima=checked_maxima)


def fused_available(sequence: str) -> bool:
    """True once ``sequence`` has a compiled kernel that ran; False if it fell back to eager or never ran."""
    return sequence not in _failed and any(k.split("/")[0] == sequence for k in _compiled)
