"""Eager signal kernels for when no gradient is needed: the same equations on a few full-size buffers, in place.

The functional kernels in ``mri_ssl.physics.sequences`` (``fse_kernel``, ...) are written for autograd and for
``torch.compile``: every step returns a new tensor. Run eagerly on a volume, each step then allocates a full-size
temporary (on CPU, large allocations come fresh from the kernel, which faults in and zeroes every page) and streams
it through memory again. Here the same arithmetic writes into the output and at most two scratch buffers:

- each decay ``exp(-rate t)`` is one multiply into a buffer, a clamp and an ``exp2`` in place, with ``-t log2(e)``
  computed once per protocol (``exp2`` is also the faster of the two in eager torch on CPU);
- sums and products of three operands use ``addcmul`` / ``sub`` with ``out=``, one pass where plain operators take
  two;
- per-protocol factors (``sin(a)``, ``cos(a)^n``, ``b1`` when it is a number) are folded into one multiplier;
- MPRAGE is multiplied out so that the magnetisation terms share buffers (``mprage_into``).

Every function takes the kernel's arguments as ``as_protocol_batch`` prepares them, plus ``out`` (a contiguous
tensor of the broadcast shape, which must not share memory with any argument), writes the signed signal (or its
magnitude) into ``out`` and returns it. ``checked_maxima`` (the largest value of each rate map, by argument name) may
only be given for maps and a protocol that ``check_maps`` and ``check_protocol`` passed: the kernels then skip clamps
that cannot act and, for FSE and GRE, a magnitude of a signal that cannot be negative. The arguments are never
modified. ``run_kernel`` picks these when autograd is not involved; the tests check them against the functional
kernels and the reference formulas.
"""

from __future__ import annotations

import torch

from mri_ssl.physics.sequences import LOG2_E, SMALLEST_EXPONENT

# exp(x) = exp2(x log2 e), as ``sequences.decay`` computes it: the floor of the exponent in base-2 units.
SMALLEST_EXPONENT_BASE2 = SMALLEST_EXPONENT * LOG2_E


def _decay_into(buffer: torch.Tensor, rate: torch.Tensor, time: torch.Tensor, largest_rate: float | None = None
                ) -> torch.Tensor:
    """``buffer = exp(max(-rate * time, SMALLEST_EXPONENT))``: a multiply, a clamp and an ``exp2`` in place.

    ``largest_rate``: the rate map's largest value when a check has found it; the clamp is skipped when no voxel can
    reach the floor (it never acts for the typical protocols). Only read on CPU, where it costs no device sync.
    """
    shape = buffer.shape
    torch.mul(rate.expand(shape), (time * -LOG2_E).expand(shape), out=buffer)
    known_above_floor = (largest_rate is not None and time.device.type == "cpu"
                         and largest_rate * max(float(time.max()), 0.0) <= -SMALLEST_EXPONENT)
    if not known_above_floor:
        buffer.clamp_min_(SMALLEST_EXPONENT_BASE2)
    return buffer.exp2_()


def _largest(checked_maxima, name: str) -> float | None:
    return None if checked_maxima is None else checked_maxima.get(name)


def _scale(buffer: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Multiply in place unless ``factor`` is the number 1 (a receive field given as the float 1.0, the default)."""
    on_cpu = isinstance(factor, torch.Tensor) and factor.ndim == 0 and factor.device.type == "cpu"
    if on_cpu and float(factor) == 1.0:  # reading a CUDA number would wait for the GPU
        return buffer
    return buffer.mul_(factor)


def _finish(out: torch.Tensor, magnitude: bool, never_negative: bool = False) -> torch.Tensor:
    """The magnitude in place, unless the signal is known to be non-negative already."""
    return out.abs_() if magnitude and not never_negative else out


def _scratch(out: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def _one(out: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=out.dtype, device=out.device)


def fse_into(out, pd, r1, r2, tr, te, b1, magnitude=False, checked_maxima=None):
    """``b1 pd (1 - exp(-R1 TR)) exp(-R2 TE)`` as ``pd e2 - pd e2 e1``: 2 decays, 2 passes, 1 scratch buffer.

    Checked maps (PD, B1, rates >= 0) give a signal >= 0, so its magnitude needs no pass.
    """
    e2 = _decay_into(_scratch(out), r2, te, _largest(checked_maxima, "r2")).mul_(pd)  # pd e2
    e1 = _decay_into(out, r1, tr, _largest(checked_maxima, "r1"))
    torch.addcmul(e2, e2, e1, value=-1.0, out=out)  # pd e2 (1 - e1)
    return _finish(_scale(out, b1), magnitude, never_negative=checked_maxima is not None)


def gre_into(out, pd, r1, r2s, mt, tr, te, flip_angle, b1, magnitude=False, checked_maxima=None):
    """``b1 pd sin(a) s (1 - e1) / (1 - cos(a) s e1) exp(-R2* TE)``, ``s = 1 - MT``: 2 decays, 1 scratch buffer.

    Checked maps (PD, B1 >= 0, MT in [0, 1)) and a flip angle in (0, pi] (``check_protocol``) give a signal >= 0.
    """
    one = _one(out)
    scratch = _decay_into(_scratch(out), r1, tr, _largest(checked_maxima, "r1"))  # e1
    torch.addcmul(pd.expand(out.shape), pd, mt, value=-1.0, out=out)  # pd s
    torch.addcmul(out, out, scratch, value=-1.0, out=out)  # pd s (1 - e1)
    torch.addcmul(scratch, scratch, mt, value=-1.0, out=scratch)  # s e1
    out.div_(torch.addcmul(one, scratch, -torch.cos(flip_angle), out=scratch))  # over 1 - cos(a) s e1
    out.mul_(_decay_into(scratch, r2s, te, _largest(checked_maxima, "r2s")))
    return _finish(_scale(out, torch.sin(flip_angle) * b1), magnitude, never_negative=checked_maxima is not None)


def flair_into(out, pd, r1, r2, tr, te, ti, b1, magnitude=False, checked_maxima=None):
    """``b1 pd exp(-R2 TE) (1 - 2 exp(-R1 TI) + exp(-R1 TR))``: 3 decays, 1 scratch buffer."""
    largest_r1 = _largest(checked_maxima, "r1")
    scratch = _decay_into(_scratch(out), r1, tr, largest_r1).add_(1.0)  # 1 + e_tr
    inversion = _decay_into(out, r1, ti, largest_r1)
    torch.add(scratch, inversion, alpha=-2.0, out=out)  # 1 - 2 e_ti + e_tr
    out.mul_(_decay_into(scratch, r2, te, _largest(checked_maxima, "r2")).mul_(pd))
    return _finish(_scale(out, b1), magnitude)


def mprage_into(out, pd, r1, r2s, tr, ti, tx, te, flip_angle, n, inversion_efficiency, b1, magnitude=False,
                checked_maxima=None):
    """The single-readout MPRAGE steady state of ``sequences.mprage``, multiplied out to need three scratch buffers.

    With ``m = m_inf``, ``EA``, ``EB`` the free-recovery decays before and after the train,
    ``D_t = cos(a)^n exp(-R1 n tx)`` and ``D_h = cos(a)^(n/2) exp(-R1 n tx / 2)``::

        m_ss = (1 + EB (m - 1 + (1 - EA - m) D_t)) / (1 + eff cos(a)^n exp(-R1 TR))
        Mz_c = m + (1 - EA (1 + eff m_ss) - m) D_h

    the same fixed point (``TR = ta + n tx + tb``, so ``EA EB exp(-R1 n tx) = exp(-R1 TR)``).
    """
    one = _one(out)
    largest_r1 = _largest(checked_maxima, "r1")
    half_train_s = 0.5 * n * tx
    cos_a = torch.cos(flip_angle)
    cos_a_n = torch.pow(cos_a, n)
    m_inf, inversion, spare = _scratch(out), _scratch(out), _scratch(out)
    e1 = _decay_into(m_inf, r1, tx, largest_r1)
    torch.addcmul(one, e1, -cos_a, out=spare)  # 1 - cos(a) e1
    torch.sub(one, e1, out=m_inf).div_(spare)  # m = (1 - e1) / (1 - cos(a) e1)
    _decay_into(inversion, r1, ti - half_train_s, largest_r1)  # EA
    torch.sub(one, inversion, out=out).sub_(m_inf)  # 1 - EA - m
    train = _decay_into(spare, r1, 2.0 * half_train_s, largest_r1).mul_(cos_a_n)  # D_t
    torch.addcmul(m_inf, out, train, out=out).sub_(1.0)  # m - 1 + (1 - EA - m) D_t
    after_train = _decay_into(spare, r1, tr - ti - half_train_s, largest_r1)  # EB
    torch.addcmul(one, out, after_train, out=out)  # numerator of m_ss
    whole_cycle = _decay_into(spare, r1, tr, largest_r1)
    out.div_(torch.addcmul(one, whole_cycle, inversion_efficiency * cos_a_n, out=whole_cycle))  # m_ss
    torch.addcmul(one, out, inversion_efficiency, out=out).mul_(inversion)  # EA (1 + eff m_ss)
    torch.sub(one, out, out=out).sub_(m_inf)  # Mz0 - m
    half_train = _decay_into(inversion, r1, half_train_s, largest_r1).mul_(torch.pow(cos_a, 0.5 * n))  # D_h
    torch.addcmul(m_inf, out, half_train, out=out)  # Mz at the k-space centre
    out.mul_(_decay_into(spare, r2s, te, _largest(checked_maxima, "r2s")).mul_(pd))
    return _finish(_scale(out, torch.sin(flip_angle) * b1), magnitude)


INPLACE_KERNELS = {"fse": fse_into, "gre": gre_into, "flair": flair_into, "mprage": mprage_into}
