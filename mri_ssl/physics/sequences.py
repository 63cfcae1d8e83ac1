"""Steady-state signal equations of the four sequences the sequence-invariant method simulates.

Every function maps quantitative MRI maps to the signal a scanner would measure, in the units of the PD map:

- ``pd``: proton density (any scale, >= 0), ``r1`` = 1/T1, ``r2`` = 1/T2, ``r2s`` = 1/T2* in 1/s,
  ``mt``: magnetisation-transfer saturation as a fraction in [0, 1);
- times (``tr``, ``te``, ``ti``, ``tx``) in seconds, ``flip_angle`` in radians;
- ``b1``: the receive-field (coil sensitivity) factor that scales the whole signal.

Batches of protocols
    Any argument may be a Python float or a tensor. A protocol parameter given as a 1-D tensor of length B is a
    *batch of B protocols*: it is reshaped to ``(B, 1, ..., 1)`` so that the result has shape ``(B, *map_shape)``
    and the maps are read once for all B contrasts. Tensors of other shapes broadcast as torch broadcasts them.

The equations return the *signed* signal (what a phase-sensitive reconstruction gives); ``simulate`` takes its
magnitude as a scanner's magnitude reconstruction does. They run on any device and dtype and are differentiable.

The ``*_kernel`` functions hold the pure element-wise arithmetic; ``mri_ssl.physics.fused`` compiles exactly these,
so the eager and fused paths cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Union

import torch

Number = Union[float, int, torch.Tensor]

# Protocol parameters of each public equation, in the order its kernel takes them (after the maps).
MAP_ARGUMENTS = {
    "fse": ("pd", "r1", "r2"),
    "gre": ("pd", "r1", "r2s", "mt"),
    "flair": ("pd", "r1", "r2"),
    "mprage": ("pd", "r1", "r2s"),
    "bssfp": ("pd", "r1", "r2"),
}
PROTOCOL_ARGUMENTS = {
    "fse": ("tr", "te"),
    "gre": ("tr", "te", "flip_angle"),
    "flair": ("tr", "te", "ti"),
    "mprage": ("tr", "ti", "tx", "te", "flip_angle", "n", "inversion_efficiency"),
    "bssfp": ("tr", "te", "flip_angle"),
}


def _reference_tensor(*values: Number) -> torch.Tensor | None:
    """The first tensor among ``values``, whose device and dtype the computation uses."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    return None


def as_protocol_batch(maps: tuple[Number, ...], params: tuple[Number, ...]) -> tuple[tuple, tuple]:
    """Cast every argument to the device and floating dtype of the first map tensor, and lift 1-D protocol tensors.

    A 1-D protocol tensor of length B becomes ``(B, 1, ..., 1)`` with one singleton per map dimension, so the
    batch of protocols lands on a new leading axis instead of broadcasting along the maps' last axis.
    """
    # The maps set the dtype and device (protocols are often float64 from the sampler; the volume's dtype wins).
    reference = _reference_tensor(*maps)
    if reference is None:
        reference = _reference_tensor(*params)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.get_default_dtype()
    map_tensors = tuple(torch.as_tensor(m, dtype=dtype, device=device) for m in maps)
    map_ndim = max(m.ndim for m in map_tensors)
    param_tensors = []
    for value in params:
        tensor = torch.as_tensor(value, dtype=dtype, device=device)
        if tensor.ndim == 1:
            tensor = tensor.reshape(-1, *([1] * map_ndim))
        param_tensors.append(tensor)
    return map_tensors, tuple(param_tensors)


# ----------------------------------------------------------------------------------------------------------------
# Kernels: pure element-wise arithmetic on broadcastable tensors (what the fused path compiles).

# exp(-60) ~ 1e-26: far below any measurable signal, and above float32's denormal range (< 1.2e-38), where x86
# arithmetic runs several times slower (measured 4x for FSE with TE = 2.5 s, which the paper's distribution draws).
SMALLEST_EXPONENT = -60.0


LOG2_E = 1.0 / math.log(2.0)


def decay(rate, time, exp2=torch.exp2):
    """``exp(-rate * time)`` floored at ``exp(SMALLEST_EXPONENT)``, computed as ``exp2(rate * (-time log2 e))``: the
    factor is one number per protocol, and in eager torch on CPU ``exp2`` runs about twice as fast as ``exp``.

    ``exp2``: the base-2 exponential to use; the compiled CPU path passes ``fused.polynomial_exp2`` (the kernels
    take it as a keyword and hand it on)."""
    return exp2(torch.clamp_min(rate * (time * -LOG2_E), SMALLEST_EXPONENT * LOG2_E))


def fse_kernel(pd, r1, r2, tr, te, b1, exp2=torch.exp2):
    return b1 * pd * (1.0 - decay(r1, tr, exp2)) * decay(r2, te, exp2)


def gre_protocol_constants(tr, te, flip_angle, b1):
    """The per-protocol numbers of the GRE signal: the arguments of ``gre_voxel_kernel`` after the maps."""
    return tr, te, torch.sin(flip_angle), torch.cos(flip_angle), b1


def gre_voxel_kernel(pd, r1, r2s, mt, tr, te, sin_a, cos_a, b1, exp2=torch.exp2):
    e1 = decay(r1, tr, exp2)
    saturation = 1.0 - mt
    return b1 * pd * sin_a * saturation * (1.0 - e1) / (1.0 - cos_a * saturation * e1) * decay(r2s, te, exp2)


def gre_kernel(pd, r1, r2s, mt, tr, te, flip_angle, b1, exp2=torch.exp2):
    return gre_voxel_kernel(pd, r1, r2s, mt, *gre_protocol_constants(tr, te, flip_angle, b1), exp2=exp2)


def flair_kernel(pd, r1, r2, tr, te, ti, b1, exp2=torch.exp2):
    return b1 * pd * decay(r2, te, exp2) * (1.0 - 2.0 * decay(r1, ti, exp2) + decay(r1, tr, exp2))


def mprage_protocol_constants(tr, ti, tx, te, flip_angle, n, inversion_efficiency, b1):
    """The per-protocol numbers of the MPRAGE signal, computed once rather than once per voxel.

    Timing of one inversion cycle (Marques et al. 2010, with a single readout train whose k-space centre is
    excitation n/2): inversion -> delay ta -> n excitations spaced tx -> delay tb -> next inversion. Returns the
    arguments of ``mprage_voxel_kernel`` after the maps.
    """
    half_train = 0.5 * n
    cos_a = torch.cos(flip_angle)
    ta = ti - half_train * tx
    tb = tr - ti - half_train * tx
    # (cos(a) * E1)^k is written as cos(a)^k * exp(-k tx R1): cos(a)^k is one number per protocol, and no log of a
    # per-voxel quantity is needed.
    return (tx, ta, tb, n * tx, half_train * tx, cos_a, torch.pow(cos_a, n), torch.pow(cos_a, half_train),
            inversion_efficiency, torch.sin(flip_angle), te, b1)


def mprage_voxel_kernel(pd, r1, r2s, tx, ta, tb, train_s, half_train_s, cos_a, cos_a_n, cos_a_half,
                        inversion_efficiency, sin_a, te, b1, exp2=torch.exp2):
    e1 = decay(r1, tx, exp2)
    ea = decay(r1, ta, exp2)
    eb = decay(r1, tb, exp2)
    decay_train = cos_a_n * decay(r1, train_s, exp2)
    decay_half = cos_a_half * decay(r1, half_train_s, exp2)
    # Longitudinal magnetisation (in units of M0) that a long GRE train approaches.
    mz_train_limit = (1.0 - e1) / (1.0 - cos_a * e1)
    # Steady state just before each inversion pulse: solve m = f(m) for one cycle.
    mz_before_inversion = (((1.0 - ea) * decay_train + mz_train_limit * (1.0 - decay_train)) * eb + (1.0 - eb)) / (
        1.0 + inversion_efficiency * ea * eb * decay_train
    )
    mz_train_start = (1.0 - ea) - inversion_efficiency * mz_before_inversion * ea
    mz_centre = mz_train_start * decay_half + mz_train_limit * (1.0 - decay_half)
    # PD multiplies last: the magnetisation is computed per unit M0, so PD = 0 gives 0, never 0/0.
    return b1 * pd * sin_a * mz_centre * decay(r2s, te, exp2)


def mprage_kernel(pd, r1, r2s, tr, ti, tx, te, flip_angle, n, inversion_efficiency, b1, exp2=torch.exp2):
    constants = mprage_protocol_constants(tr, ti, tx, te, flip_angle, n, inversion_efficiency, b1)
    return mprage_voxel_kernel(pd, r1, r2s, *constants, exp2=exp2)


def bssfp_kernel(pd, r1, r2, tr, te, flip_angle, b1, exp2=torch.exp2):
    e1 = decay(r1, tr, exp2)
    e2 = decay(r2, tr, exp2)
    return (
        b1 * pd * torch.sin(flip_angle) * (1.0 - e1)
        / (1.0 - (e1 - e2) * torch.cos(flip_angle) - e1 * e2)
        * decay(r2, te, exp2)
    )


KERNELS = {"fse": fse_kernel, "gre": gre_kernel, "flair": flair_kernel, "mprage": mprage_kernel,
           "bssfp": bssfp_kernel}

# Kernels split into a per-protocol part (run eagerly, a few numbers) and a per-voxel part (what the fused path
# compiles): inside a compiled loop, trigonometry and powers of protocol scalars are recomputed for every voxel
# block (measured: MPRAGE fused 12-24 % faster split; GRE 8.6 -> 6.6 ms on 192x224x192 with 2 threads, i.e. from
# 1.6x to about 1.25x its memory floor: the loop computed a vector sin and cos of the flip angle per voxel block).
SPLIT_KERNELS = {"gre": (gre_protocol_constants, gre_voxel_kernel),
                 "mprage": (mprage_protocol_constants, mprage_voxel_kernel)}


# ----------------------------------------------------------------------------------------------------------------
# Public equations.


def fse(pd: Number, r1: Number, r2: Number, *, tr: Number, te: Number, b1: Number = 1.0) -> torch.Tensor:
    """Fast spin echo: ``S = B1 * PD * (1 - exp(-R1 TR)) * exp(-R2 TE)``.

    Args:
        pd: proton density. r1: 1/T1 in 1/s. r2: 1/T2 in 1/s.
        tr: repetition time in s. te: effective echo time in s. b1: receive-field factor.
    """
    (pd, r1, r2), (tr, te, b1) = as_protocol_batch((pd, r1, r2), (tr, te, b1))
    return fse_kernel(pd, r1, r2, tr, te, b1)


def gre(
    pd: Number,
    r1: Number,
    r2s: Number,
    *,
    tr: Number,
    te: Number,
    flip_angle: Number,
    mt: Number = 0.0,
    b1: Number = 1.0,
) -> torch.Tensor:
    """Spoiled gradient echo with magnetisation-transfer saturation.

    ``S = B1 PD sin(a) (1 - MT) (1 - E1) / (1 - cos(a) (1 - MT) E1) * exp(-R2* TE)``, ``E1 = exp(-R1 TR)``.
    With MT = 0 this is the Ernst equation, largest at the Ernst angle ``arccos(E1)``.

    Args:
        pd, r1 (1/s), r2s (1/s): maps. mt: MT saturation fraction in [0, 1).
        tr, te: seconds. flip_angle: radians. b1: receive-field factor.
    """
    (pd, r1, r2s, mt), (tr, te, flip_angle, b1) = as_protocol_batch((pd, r1, r2s, mt), (tr, te, flip_angle, b1))
    return gre_kernel(pd, r1, r2s, mt, tr, te, flip_angle, b1)


def flair(
    pd: Number, r1: Number, r2: Number, *, tr: Number, te: Number, ti: Number, b1: Number = 1.0
) -> torch.Tensor:
    """Fluid-attenuated inversion recovery: ``S = B1 PD exp(-R2 TE) (1 - 2 exp(-R1 TI) + exp(-R1 TR))``.

    The signal of a tissue is nulled at ``TI = ln(2) / R1`` when ``TR >> T1``; choosing TI for CSF's R1 gives the
    dark fluid of a clinical FLAIR.

    Args:
        pd, r1 (1/s), r2 (1/s): maps. tr, te, ti: seconds. b1: receive-field factor.
    """
    (pd, r1, r2), (tr, te, ti, b1) = as_protocol_batch((pd, r1, r2), (tr, te, ti, b1))
    return flair_kernel(pd, r1, r2, tr, te, ti, b1)


def mprage(
    pd: Number,
    r1: Number,
    r2s: Number,
    *,
    tr: Number,
    ti: Number,
    tx: Number,
    te: Number,
    flip_angle: Number,
    n: Number,
    inversion_efficiency: Number = 0.96,
    b1: Number = 1.0,
) -> torch.Tensor:
    """Single-readout MPRAGE in its steady state, from the MP2RAGE signal model (Marques et al., NeuroImage 2010).

    One cycle of length ``tr``: an inversion pulse of efficiency ``inversion_efficiency`` (``Mz -> -eff Mz``),
    free recovery for ``ta = ti - (n/2) tx``, a train of ``n`` excitations of angle ``flip_angle`` spaced ``tx``,
    then free recovery for ``tb = tr - ti - (n/2) tx`` until the next inversion. ``ti`` is measured from the
    inversion to the k-space centre, which is excitation n/2. With ``E1 = exp(-R1 tx)``, ``EA = exp(-R1 ta)``,
    ``EB = exp(-R1 tb)`` and ``c = cos(a)``, the train drives Mz towards ``m_inf = (1 - E1) / (1 - c E1)``; the
    magnetisation just before inversion solves the one-cycle fixed point::

        m_ss = ([(1 - EA) (c E1)^n + m_inf (1 - (c E1)^n)] EB + 1 - EB) / (1 + eff EA EB (c E1)^n)

    and the signal is ``B1 PD sin(a) Mz_centre exp(-R2* te)`` with
    ``Mz_centre = (1 - EA - eff m_ss EA) (c E1)^(n/2) + m_inf (1 - (c E1)^(n/2))``.

    Args:
        pd, r1 (1/s), r2s (1/s): maps.
        tr: time between inversions in s. ti: inversion to k-space centre in s. tx: excitation spacing in s.
        te: echo time in s. flip_angle: radians. n: excitations per train. inversion_efficiency: in (0, 1].
        b1: receive-field factor.
    """
    (pd, r1, r2s), params = as_protocol_batch(
        (pd, r1, r2s), (tr, ti, tx, te, flip_angle, n, inversion_efficiency, b1)
    )
    return mprage_kernel(pd, r1, r2s, *params)


def bssfp(
    pd: Number, r1: Number, r2: Number, *, tr: Number, te: Number | None = None, flip_angle: Number, b1: Number = 1.0
) -> torch.Tensor:
    """Balanced steady-state free precession (TrueFISP / FIESTA / balanced FFE), on resonance, the cine sequence.

    With every gradient balanced, transverse magnetisation is refocused instead of spoiled, and alternating
    (0, 180 degree) RF phase cycling puts an on-resonance spin in the pass band. Its steady state (Freeman and Hill,
    J Magn Reson 1971; Scheffler and Lehnhardt, Eur Radiol 2003;13:2409-2418) is::

        S = B1 PD sin(a) (1 - E1) / (1 - (E1 - E2) cos(a) - E1 E2) * exp(-R2 TE),  E1 = exp(-R1 TR), E2 = exp(-R2 TR)

    with ``TE = TR / 2`` by default (a symmetric echo, where the refocused signal is a pure T2 decay). For
    ``TR << T1, T2`` it tends to ``sin(a) / ((1 + cos a) + (1 - cos a) R1 / R2)``, the T2/T1 contrast that makes
    blood bright and myocardium grey; at the optimal flip ``cos(a) = (R2 - R1) / (R2 + R1)``
    (``bssfp_optimal_flip_angle``) it reaches ``0.5 sqrt(R1 / R2) = 0.5 sqrt(T2 / T1)``.

    Args:
        pd, r1 (1/s), r2 (1/s): maps. tr, te: seconds (``te`` default ``tr / 2``). flip_angle: radians.
        b1: receive-field factor.
    """
    if te is None:
        te = tr / 2
    (pd, r1, r2), (tr, te, flip_angle, b1) = as_protocol_batch((pd, r1, r2), (tr, te, flip_angle, b1))
    return bssfp_kernel(pd, r1, r2, tr, te, flip_angle, b1)


def bssfp_optimal_flip_angle(r1: Number, r2: Number) -> torch.Tensor:
    """The flip angle in radians that maximises the short-TR bSSFP signal: ``arccos((R2 - R1) / (R2 + R1))``, that is
    ``arccos((T1 - T2) / (T1 + T2))``."""
    r1 = torch.as_tensor(r1, dtype=torch.float64)
    r2 = torch.as_tensor(r2, dtype=torch.float64)
    return torch.arccos((r2 - r1) / (r2 + r1))


def rician_noise(
    signal: torch.Tensor, sigma: Number, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Magnitude of a signal with complex Gaussian noise: ``sqrt((S + e_r)^2 + e_i^2)``, ``e ~ N(0, sigma^2)``.

    Args:
        signal: noise-free signal, any shape, device and floating dtype.
        sigma: standard deviation of each of the real and imaginary noise components, in the signal's units; a
            1-D tensor of length B gives one sigma per item of a leading batch axis.
        generator: a ``torch.Generator`` on the signal's device, for reproducible noise.
    """
    sigma = torch.as_tensor(sigma, dtype=signal.dtype, device=signal.device)
    if sigma.ndim == 1:
        sigma = sigma.reshape(-1, *([1] * (signal.ndim - 1)))
    if bool(torch.any(sigma < 0)):
        raise ValueError(f"rician_noise: sigma must be >= 0, got {sigma.flatten().tolist()[:8]}")
    noise_real = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    noise_imag = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    return torch.sqrt((signal + sigma * noise_real) ** 2 + (sigma * noise_imag) ** 2)


def ernst_angle(r1: Number, tr: Number) -> torch.Tensor:
    """The flip angle in radians that maximises the spoiled-GRE signal: ``arccos(exp(-R1 TR))``."""
    return torch.arccos(torch.exp(-torch.as_tensor(r1, dtype=torch.float64) * tr))


def flair_null_ti(r1: Number) -> float:
    """The inversion time in s that nulls a tissue of rate ``r1`` (1/s) when TR >> T1: ``ln(2) / R1``."""
    return math.log(2.0) / float(r1)
