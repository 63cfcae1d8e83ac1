"""Fused (compiled) signal kernels with a silent eager fallback, writing into a fresh or a caller's output.

In eager mode every arithmetic step of a signal equation reads and writes a whole volume, so an equation with ten
steps moves ten volumes through memory. ``torch.compile`` fuses the steps into one loop that reads the maps once and
writes the image once. Compilation needs a working compiler tool chain (a C++ compiler on CPU, Triton on CUDA); where
it is missing or fails, the eager kernel runs instead and gives the same numbers, so callers never need to care.

Protocol values are passed as tensors, never Python floats: a compiled function specialises on Python numbers and
would recompile for every new protocol.

When the compiled kernel is used
    A compiled function belongs to a kernel variant (sequence; magnitude or signed; with or without autograd) and an
    argument *signature* (device, dtype, every argument's shape: one map size with one number of protocols).
    ``fused=True`` compiles on the first call of each variant and signature, ``fused=False`` never compiles. The
    default, ``fused=None``, follows a rent-or-buy rule per variant and signature: it runs the eager kernels and adds
    up the seconds they take in this process; once that total reaches ``AUTO_COMPILE_AFTER_S`` (about what one
    compile costs on CPU), it compiles and uses the compiled kernel from then on. A one-off call, or a test on small
    volumes, never pays a compile; a training loop pays it once per signature (its crop size, a whole volume), after
    spending at most as long again in eager calls, so it is never more than about twice as slow as the better choice
    made in hindsight. On CUDA, eager calls return before the GPU finishes, so the rule sees only launch time and
    compiles late or never: pass ``fused=True`` there for long runs.

    The first ``STATIC_SIGNATURES`` signatures of a variant are compiled for their fixed sizes; further signatures
    share one shape-generic compile, so a process never compiles a variant more than ``STATIC_SIGNATURES + 1``
    times. Protocol values are tensors, so new protocols never recompile.

Without autograd, the compiled function writes straight into its output (``out=`` when the caller gives one), and
takes the magnitude in the same loop when asked, so ``simulate`` makes one pass over the image, not two.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Callable, Mapping

import torch

from mri_ssl.errors import InputError
from mri_ssl.physics.inplace import INPLACE_KERNELS
from mri_ssl.physics.sequences import KERNELS, MAP_ARGUMENTS, SPLIT_KERNELS

logger = logging.getLogger(__name__)

# Compiled functions, by ``variant@signature``. The variant: ``sequence`` -> the writing function taking the
# magnitude (what ``simulate`` uses, no autograd), ``sequence/signal`` -> the same for the signed signal,
# ``sequence/autograd`` -> the kernel returning a fresh, differentiable result. The signature: device, dtype and the
# shape of every argument, or device, dtype and ``any`` for the shape-generic compile (see ``STATIC_SIGNATURES``).
_compiled: dict[str, Callable] = {}
_failed: set[str] = set()

# Set MRI_SSL_DISABLE_COMPILE=1 to force the eager path (e.g. to debug, or on a machine without a compiler).
DISABLE_ENV = "MRI_SSL_DISABLE_COMPILE"

# Eager seconds per kernel variant and signature after which ``fused=None`` compiles: about one compile of a kernel
# once inductor has started (3.8 s for FSE on a quiet 2-core CPU when this was set; the first compile of a process
# adds inductor's own start-up, several seconds). ``benchmarks/simulator.py`` prints the compile seconds of each
# kernel; on a loaded machine they are several times longer, with a warm on-disk cache shorter.
AUTO_COMPILE_AFTER_S = 4.0
_eager_seconds: dict[str, float] = {}

# Argument signatures (shapes, dtype, device) each variant gets its own fixed-shape compile for; calls with further
# signatures share one shape-generic (``dynamic=True``) compile. Fixed sizes let inductor drop the symbolic index
# arithmetic and the tail loop: measured 15-20 % faster on 192x224x192 FSE. A training loop has one or two
# signatures (its crop, a whole volume, a protocol batch); a test suite with many tiny shapes stops compiling anew
# after these.
STATIC_SIGNATURES = 4


def _fit_exp2_polynomial(degree: int = 5) -> tuple[float, ...]:
    """Coefficients (lowest power first) of the polynomial closest to ``2^f`` on [-1/2, 1/2] in relative error.

    A least-squares fit in float64 on Chebyshev nodes, weighted by ``2^-f``. At degree 5 its largest relative error
    is 1.0e-7; evaluated in float32 the result is within 1.9e-7 of the exact ``2^x`` (Sleef's ``exp2``: 7e-8).
    Degree 6 (2.2e-9, float32 result within 1.0e-7) measured 10-15 % slower for the whole FSE and FLAIR kernels.
    """
    nodes = torch.cos(torch.pi * (torch.arange(512, dtype=torch.float64) + 0.5) / 512) * 0.5
    target = torch.exp2(nodes)
    # The constant term is held at 1, so that 2^0 is exactly 1 (a zero rate gives a decay of exactly 1).
    powers = torch.stack([nodes ** k for k in range(1, degree + 1)], dim=1) / target[:, None]
    solution = torch.linalg.lstsq(powers, (1.0 - 1.0 / target)[:, None]).solution
    return (1.0, *(float(c) for c in solution[:, 0]))


_EXP2_COEFFICIENTS = {degree: _fit_exp2_polynomial(degree) for degree in (5, 6)}
# MPRAGE's steady state subtracts nearly equal magnetisations: with a degree-5 fit its compiled image differed from
# the eager one by 1.6e-5 of the largest value (tests/test_simulate.py allows 1e-5); degree 6 keeps it at the 1e-6
# of Sleef's exp2. The other sequences have no such cancellation.
EXP2_DEGREES = {"mprage": 6}
_FLOAT32_MANTISSA_BITS = 23
_FLOAT32_EXPONENT_BIAS = 127


def polynomial_exp2(x: torch.Tensor, degree: int = 5) -> torch.Tensor:
    """``2^x`` for float32 ``x`` in [-126, 127] (larger ``x`` is taken as 127), in arithmetic a compiled CPU loop keeps
    in vector registers: ``2^x = 2^n 2^f`` with ``n = round(x)``, ``2^f`` a polynomial of ``degree`` 5 or 6 (Horner)
    and ``2^n`` built from its IEEE-754 exponent bits.

    Why: compiled, ``torch.exp2`` calls Sleef's 1-ulp vector ``exp2``, and the FSE, GRE and FLAIR kernels are bound
    by those calls on a 2-thread AVX2 CPU, not by memory. This evaluation took about 20-25 % less CPU time for the
    whole FSE and FLAIR kernels there, and agrees with the exact ``2^x`` within 1.9e-7 relative at degree 5 (2-3
    float32 ulp), 1.0e-7 at degree 6 (``tests/test_simulate.py`` checks both). Only for float32, without autograd
    (``round`` has no useful gradient); the decays clamp their exponent at ``SMALLEST_EXPONENT`` (-86.6 in base 2),
    inside the normal range this needs.
    """
    x = torch.clamp_max(x, float(_FLOAT32_EXPONENT_BIAS))
    whole = torch.round(x)
    fraction = x - whole
    coefficients = _EXP2_COEFFICIENTS[degree]
    power = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        power = power * fraction + coefficient
    exponent_bits = (whole.to(torch.int32) + _FLOAT32_EXPONENT_BIAS) * (1 << _FLOAT32_MANTISSA_BITS)
    return power * exponent_bits.view(torch.float32)


def compile_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0", "false", "False")


def _own_code_object(function: Callable, name: str) -> Callable:
    """``function`` under a code object of its own: dynamo caches compiled graphs per code object with a recompile
    limit, which the variants and signatures must not share."""
    function.__code__ = function.__code__.replace(co_name=name)
    function.__name__ = function.__qualname__ = name
    return function


def _write_function(sequence: str, magnitude: bool, exp2: Callable = torch.exp2, name: str = "") -> Callable:
    """``write(out, *kernel_args)``: ``out.copy_(kernel(*args))`` (or its magnitude), a function to compile."""
    kernel = KERNELS[sequence]
    if sequence in SPLIT_KERNELS:
        kernel = SPLIT_KERNELS[sequence][1]

    if magnitude:
        def write(out, *args):
            out.copy_(torch.abs(kernel(*args, exp2=exp2)))
    else:
        def write(out, *args):
            out.copy_(kernel(*args, exp2=exp2))
    return _own_code_object(write, name or f"write_{sequence}_{'magnitude' if magnitude else 'signal'}")


def _signature(args: tuple, device: torch.device, dtype: torch.dtype) -> str:
    shapes = ",".join("x".join(str(size) for size in a.shape) or "()" for a in args)
    return f"{device.type}:{str(dtype).replace('torch.', '')}:{shapes}"


def _compiled_function(key: str, sequence: str, prepared: tuple, autograd: bool, magnitude: bool) -> Callable:
    """The compiled function of variant ``key`` for these arguments' signature, compiling it on first use.

    The first ``STATIC_SIGNATURES`` signatures of a variant get a fixed-shape compile each; later ones share the
    variant's shape-generic compile. On CPU in float32 without autograd, the decays use ``polynomial_exp2``.
    """
    device, dtype = prepared[0].device, prepared[0].dtype
    signature = _signature(prepared, device, dtype)
    function = _compiled.get(f"{key}@{signature}")
    if function is not None:
        return function
    static_count = sum(1 for k in _compiled if k.split("@")[0] == key and not k.endswith(":any"))
    dynamic = static_count >= STATIC_SIGNATURES
    # The shape-generic compile is still one per device and dtype: the exp2 chosen below depends on them.
    full_key = f"{key}@{signature.rsplit(':', 1)[0]}:any" if dynamic else f"{key}@{signature}"
    function = _compiled.get(full_key)
    if function is not None:
        return function
    name = f"{key.replace('/', '_')}_{'any' if dynamic else static_count}"
    if autograd:
        kernel = SPLIT_KERNELS[sequence][1] if sequence in SPLIT_KERNELS else KERNELS[sequence]
        source = _own_code_object(lambda *args: kernel(*args), f"kernel_{name}")
    else:
        fast = device.type == "cpu" and dtype == torch.float32
        exp2 = functools.partial(polynomial_exp2, degree=EXP2_DEGREES.get(sequence, 5)) if fast else torch.exp2
        source = _write_function(sequence, magnitude, exp2, f"write_{name}")
    function = _compiled[full_key] = torch.compile(source, dynamic=dynamic, fullgraph=True)
    return function


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
        fused: True: the compiled kernel (the first call per variant and signature compiles, seconds on CPU);
            False: eager; None: eager until this variant's eager calls with this signature have taken
            ``AUTO_COMPILE_AFTER_S`` in this process, then compiled (see the module docstring). If compilation or
            the compiled call raises, the failure is logged at debug level, the sequence is marked as not
            compilable for this process, and the eager result is returned. Without autograd, eager means the
            in-place kernels of ``mri_ssl.physics.inplace``.
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
    if fused is None:
        budget_key = f"{key}@{_signature(args, args[0].device, args[0].dtype)}"
        if _eager_seconds.get(budget_key, 0.0) < AUTO_COMPILE_AFTER_S:
            start = time.perf_counter()
            result = _eager(sequence, args, shape, out, magnitude, autograd, checked_maxima)
            _eager_seconds[budget_key] = _eager_seconds.get(budget_key, 0.0) + time.perf_counter() - start
            return result
    prepared = args
    if sequence in SPLIT_KERNELS:
        protocol_constants = SPLIT_KERNELS[sequence][0]
        n_maps = len(MAP_ARGUMENTS[sequence])
        prepared = (*args[:n_maps], *protocol_constants(*args[n_maps:]))
    try:
        compiled = _compiled_function(key, sequence, prepared, autograd, magnitude)
        if autograd:
            signal = compiled(*prepared)
            return signal.abs() if magnitude else signal
        result = out if out is not None else torch.empty(shape, dtype=args[0].dtype, device=args[0].device)
        compiled(result, *prepared)
        return result
    except Exception as error:  # any compiler failure falls back; the maths is the same
        logger.debug("torch.compile of the %s kernel failed, using eager: %s", sequence, error)
        _failed.add(sequence)
        for stale in [k for k in _compiled if _sequence_of(k) == sequence]:
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
    return sequence not in _failed and any(_sequence_of(k) == sequence for k in _compiled)


def _sequence_of(key: str) -> str:
    return key.split("@")[0].split("/")[0]
