"""Signal equations: closed-form properties, reference formulas, batching, gradients, dtypes and Rician noise."""

from __future__ import annotations

import math

import pytest
import torch

from mri_ssl.errors import ProtocolError
from mri_ssl.physics import sequences
from mri_ssl.physics.protocols import SEQUENCES, TYPICAL_PROTOCOLS, check_protocol, protocol_item, sample_protocol
from mri_ssl.physics.sequences import ernst_angle, flair, flair_null_ti, fse, gre, mprage, rician_noise

F64 = torch.float64
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def call_sequence(sequence, maps, protocol, b1=1.0):
    """Call the public equation of ``sequence`` with maps from a dict (r2 for spin echo, r2s/mt for GRE)."""
    if sequence in ("fse", "flair"):
        return getattr(sequences, sequence)(maps["pd"], maps["r1"], maps["r2"], b1=b1, **protocol)
    if sequence == "gre":
        return gre(maps["pd"], maps["r1"], maps["r2s"], mt=maps.get("mt", 0.0), b1=b1, **protocol)
    return mprage(maps["pd"], maps["r1"], maps["r2s"], b1=b1, **protocol)


# ---------------------------------------------------------------------------------------------------------------
# Reference formulas at single points (written out independently with math).


def test_reference_values_at_a_point():
    pd, r1, r2, r2s, mt, b1 = 0.8, 0.9, 12.0, 25.0, 0.1, 1.3
    tr, te, ti, a = 2.0, 0.03, 0.7, math.radians(20.0)
    expected_fse = b1 * pd * (1 - math.exp(-r1 * tr)) * math.exp(-r2 * te)
    expected_flair = b1 * pd * math.exp(-r2 * te) * (1 - 2 * math.exp(-r1 * ti) + math.exp(-r1 * tr))
    e1 = math.exp(-r1 * tr)
    expected_gre = (
        b1 * pd * math.sin(a) * (1 - mt) * (1 - e1) / (1 - math.cos(a) * (1 - mt) * e1) * math.exp(-r2s * te)
    )
    t = lambda x: torch.tensor(x, dtype=F64)  # noqa: E731
    got_fse = fse(t(pd), t(r1), t(r2), tr=tr, te=te, b1=b1)
    got_flair = flair(t(pd), t(r1), t(r2), tr=tr, te=te, ti=ti, b1=b1)
    got_gre = gre(t(pd), t(r1), t(r2s), tr=tr, te=te, flip_angle=a, mt=mt, b1=b1)
    assert got_fse.item() == pytest.approx(expected_fse, rel=1e-12)
    assert got_flair.item() == pytest.approx(expected_flair, rel=1e-12)
    assert got_gre.item() == pytest.approx(expected_gre, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# FLAIR


@pytest.mark.parametrize("r1", [0.25, 0.7, 1.1, 3.0])
def test_flair_nulls_at_ln2_over_r1_for_long_tr(r1):
    pd = 2.0
    tr = 50.0 / r1  # TR >> T1: exp(-R1 TR) = exp(-50) is negligible
    null = flair_null_ti(r1)
    assert null == pytest.approx(math.log(2.0) / r1, rel=1e-15)
    ti = torch.tensor([0.9 * null, 0.999 * null, null, 1.001 * null, 1.1 * null], dtype=F64)
    maps = torch.tensor([pd], dtype=F64), torch.tensor([r1], dtype=F64), torch.tensor([10.0], dtype=F64)
    s = flair(*maps, tr=tr, te=0.0, ti=ti)[:, 0]
    assert abs(s[2].item()) < 1e-6 * pd
    # Negative (inverted) before the null, positive after: a sign change across it.
    assert s[0] < 0 and s[1] < 0 and s[3] > 0 and s[4] > 0
    assert torch.all(torch.diff(s) > 0)  # recovery is monotone in TI

    # Tissues with other R1 are not nulled at this TI.
    other = torch.tensor([0.5 * r1, 2.0 * r1], dtype=F64)
    s_other = flair(torch.full((2,), pd, dtype=F64), other, torch.full((2,), 10.0, dtype=F64), tr=tr, te=0.0,
                    ti=null)
    assert torch.all(s_other.abs() > 0.1 * pd)


def test_flair_typical_protocol_darkens_csf():
    p = TYPICAL_PROTOCOLS["flair"]
    r1 = torch.tensor([0.23, 0.7, 1.1], dtype=F64)  # CSF, GM, WM
    r2 = torch.tensor([2.0, 12.0, 14.0], dtype=F64)
    s = flair(torch.ones(3, dtype=F64), r1, r2, **p).abs()
    assert s[0] < 0.2 * s[1] and s[0] < 0.2 * s[2]


# ---------------------------------------------------------------------------------------------------------------
# GRE


def _gre_scan(r1, mt, flips, tr=0.03):
    r1 = torch.as_tensor(r1, dtype=F64)
    ones = torch.ones_like(r1)
    return gre(ones, r1, torch.zeros_like(r1), tr=tr, te=0.0, flip_angle=flips, mt=mt * ones)


def test_gre_peaks_at_the_ernst_angle():
    tr = 0.03
    r1 = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    flips = torch.linspace(0.005, math.pi / 2, 2000, dtype=F64)
    step = float(flips[1] - flips[0])
    s = _gre_scan(r1, 0.0, flips, tr)  # (2000, 3): the flip angles are a batch of protocols
    assert s.shape == (2000, 3)
    peak = flips[s.argmax(dim=0)]
    expected = torch.arccos(torch.exp(-r1 * tr))
    torch.testing.assert_close(ernst_angle(r1, tr), expected, rtol=1e-14, atol=0)
    assert torch.all((peak - expected).abs() <= step), (peak, expected)


@pytest.mark.parametrize("r1", [0.5, 1.0, 2.0])
def test_gre_derivative_vanishes_at_the_ernst_angle(r1):
    tr = 0.03
    a = ernst_angle(r1, tr).clone().requires_grad_(True)
    s = gre(torch.tensor(1.0, dtype=F64), torch.tensor(r1, dtype=F64), torch.tensor(0.0, dtype=F64),
            tr=tr, te=0.0, flip_angle=a)
    (grad,) = torch.autograd.grad(s, a)
    assert abs(grad.item()) < 1e-10 * s.item()
    # ... and it is a maximum, not a minimum: a nudge either way lowers the signal.
    for delta in (-0.01, 0.01):
        other = gre(1.0, torch.tensor(r1, dtype=F64), 0.0, tr=tr, te=0.0, flip_angle=a.detach() + delta)
        assert other < s.detach()
    # Away from it the derivative is clearly non-zero.
    b = (a.detach() * 2).requires_grad_(True)
    (grad_b,) = torch.autograd.grad(gre(1.0, torch.tensor(r1, dtype=F64), 0.0, tr=tr, te=0.0, flip_angle=b), b)
    assert grad_b < -1e-3


def test_gre_mt_lowers_the_signal_and_shifts_the_peak():
    tr, mt = 0.03, 0.2
    r1 = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    flips = torch.linspace(0.005, math.pi / 2, 2000, dtype=F64)
    step = float(flips[1] - flips[0])
    s0 = _gre_scan(r1, 0.0, flips, tr)
    s1 = _gre_scan(r1, mt, flips, tr)
    assert torch.all(s1 < s0)
    peak0 = flips[s0.argmax(dim=0)]
    peak1 = flips[s1.argmax(dim=0)]
    # Saturation scales E1 by (1 - MT), so the peak moves to arccos((1 - MT) E1), a larger angle.
    expected = torch.arccos((1 - mt) * torch.exp(-r1 * tr))
    assert torch.all((peak1 - expected).abs() <= step)
    assert torch.all(peak1 > peak0 + 10 * step)


def test_gre_t2star_decay():
    te = torch.tensor([0.002, 0.01, 0.04], dtype=F64)
    r2s = torch.tensor([30.0], dtype=F64)
    s = gre(torch.ones(1, dtype=F64), torch.ones(1, dtype=F64), r2s, tr=0.05, te=te, flip_angle=0.3)[:, 0]
    torch.testing.assert_close(s[1:] / s[0], torch.exp(-r2s * (te[1:] - te[0])), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# FSE


def test_fse_decays_exactly_exponentially_with_te():
    pd = torch.tensor([0.9, 0.7], dtype=F64)
    r1 = torch.tensor([1.0, 0.3], dtype=F64)
    r2 = torch.tensor([15.0, 3.0], dtype=F64)
    te = torch.tensor([0.01, 0.03, 0.08, 0.2, 0.5], dtype=F64)
    s = fse(pd, r1, r2, tr=3.0, te=te)  # (5, 2)
    assert torch.all(torch.diff(s, dim=0) < 0)
    ratio = s[1:] / s[:-1]
    torch.testing.assert_close(ratio, torch.exp(-r2 * torch.diff(te)[:, None]), rtol=1e-12, atol=0)


def test_fse_rises_with_tr_towards_pd_t2_decay():
    pd = torch.tensor([0.9, 0.7], dtype=F64)
    r1 = torch.tensor([1.0, 0.3], dtype=F64)
    r2 = torch.tensor([15.0, 3.0], dtype=F64)
    tr = torch.tensor([0.1, 0.5, 1.0, 3.0, 10.0, 200.0], dtype=F64)
    s = fse(pd, r1, r2, tr=tr, te=0.05)
    assert torch.all(torch.diff(s, dim=0) > 0)
    torch.testing.assert_close(s[1] / s[0], (1 - torch.exp(-r1 * 0.5)) / (1 - torch.exp(-r1 * 0.1)), rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(s[-1], pd * torch.exp(-r2 * 0.05), rtol=1e-12, atol=0)


def test_b1_scales_linearly():
    # 2-D maps: at the equation level a 1-D tensor argument is read as a batch of protocols.
    maps = {"pd": torch.ones(1, 3, dtype=F64), "r1": torch.ones(1, 3, dtype=F64),
            "r2": torch.full((1, 3), 10.0, dtype=F64), "r2s": torch.full((1, 3), 20.0, dtype=F64)}
    b1 = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    for sequence in SEQUENCES:
        base = call_sequence(sequence, maps, TYPICAL_PROTOCOLS[sequence])
        scaled = call_sequence(sequence, maps, TYPICAL_PROTOCOLS[sequence], b1=b1)
        torch.testing.assert_close(scaled, base * b1, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# MPRAGE against an explicit pulse-by-pulse simulation


def explicit_mprage(r1, tr, ti, tx, flip_angle, n, inversion_efficiency, **_):
    """Mz at the k-space centre times sin(a), found by running inversion cycles until Mz repeats.

    Cycle: inversion (Mz -> -eff Mz), recovery for ta = ti - (n/2) tx, then n excitations, each Mz -> Mz cos(a)
    followed by recovery over tx; the centre is read just before excitation n/2 (0-based), i.e. after n/2
    excitation intervals, at time ti after the inversion; then recovery for tb = tr - ti - (n/2) tx.
    """
    n = int(round(n))
    assert n % 2 == 0
    half = n // 2
    ta = ti - half * tx
    tb = tr - ti - half * tx
    assert ta > 0 and tb > 0
    cos_a = math.cos(flip_angle)

    def recover(mz, t):
        return 1.0 - (1.0 - mz) * math.exp(-r1 * t)

    mz = 1.0
    centre = None
    for cycle in range(5000):
        start = mz
        mz = recover(-inversion_efficiency * mz, ta)
        for k in range(n):
            if k == half:
                centre = mz
            mz = recover(mz * cos_a, tx)
        mz = recover(mz, tb)
        if cycle > 3 and abs(mz - start) < 1e-14:
            break
    else:
        raise AssertionError("explicit MPRAGE simulation did not reach a steady state")
    return math.sin(flip_angle) * centre


MPRAGE_PROTOCOLS = [
    TYPICAL_PROTOCOLS["mprage"],
    dict(tr=1.5, ti=0.5, tx=0.01, te=0.003, flip_angle=math.radians(30.0), n=8.0, inversion_efficiency=1.0),
    dict(tr=3.0, ti=1.1, tx=0.008, te=0.004, flip_angle=math.radians(5.0), n=176.0, inversion_efficiency=0.9),
    dict(tr=0.8, ti=0.3, tx=0.02, te=0.003, flip_angle=math.radians(60.0), n=20.0, inversion_efficiency=0.96),
    # Flip angles above 90 degrees (cos < 0) are allowed by check_protocol; even n keeps the centre well defined.
    dict(tr=1.0, ti=0.4, tx=0.01, te=0.003, flip_angle=math.radians(100.0), n=6.0, inversion_efficiency=0.96),
]


def _mprage_id(p):
    return f"n{int(p['n'])}-fa{math.degrees(p['flip_angle']):.0f}"


@pytest.mark.parametrize("protocol", MPRAGE_PROTOCOLS, ids=_mprage_id)
def test_mprage_matches_explicit_pulse_simulation(protocol):
    check_protocol("mprage", protocol)
    r1_values = [0.05, 0.23, 0.7, 1.1, 3.0, 10.0]
    pd, r2s = 0.8, 20.0
    got = mprage(torch.full((len(r1_values),), pd, dtype=F64), torch.tensor(r1_values, dtype=F64),
                 torch.full((len(r1_values),), r2s, dtype=F64), **protocol)
    t2s_factor = pd * math.exp(-r2s * protocol["te"])
    expected = torch.tensor([t2s_factor * explicit_mprage(r1, **protocol) for r1 in r1_values], dtype=F64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12 * pd)


def test_mprage_batch_of_sampled_protocols_matches_explicit_simulation():
    protocol = sample_protocol("mprage", 3, generator=torch.Generator().manual_seed(7))
    r1_values = [0.23, 0.7, 1.1]
    got = mprage(torch.ones(3, dtype=F64), torch.tensor(r1_values, dtype=F64), torch.zeros(3, dtype=F64), **protocol)
    assert got.shape == (3, 3)
    for b in range(3):
        item = protocol_item(protocol, b)
        expected = torch.tensor([explicit_mprage(r1, **item) for r1 in r1_values], dtype=F64)
        torch.testing.assert_close(got[b], expected, rtol=1e-6, atol=1e-12)


def test_mprage_zero_pd_gives_zero_and_is_finite():
    p = TYPICAL_PROTOCOLS["mprage"]
    pd = torch.tensor([0.0, 0.0, 0.0, 1.0])
    r1 = torch.tensor([0.0, 1.0, 0.23, 0.0])
    r2s = torch.tensor([0.0, 0.0, 30.0, 0.0])
    s = mprage(pd, r1, r2s, **p)
    assert torch.all(torch.isfinite(s))
    assert torch.all(s[:3] == 0)


def test_mprage_typical_contrast_wm_gm_csf():
    p = TYPICAL_PROTOCOLS["mprage"]
    r1 = torch.tensor([1.1, 0.7, 0.23], dtype=F64)  # WM, GM, CSF
    s = mprage(torch.ones(3, dtype=F64), r1, torch.full((3,), 20.0, dtype=F64), **p).abs()
    assert s[0] > s[1] > s[2]
    assert s[1] > 1.2 * s[2]


def test_mprage_odd_train_is_rejected_and_accepted_protocols_are_finite():
    """The k-space centre is excitation n/2, so n must be even; then cos(a) ** (n / 2) is defined for any flip.

    (Odd n with a flip above 90 degrees would raise a negative number to a fractional power: NaN.)
    """
    protocol = dict(tr=1.0, ti=0.4, tx=0.01, te=0.003, flip_angle=math.radians(100.0), n=5.0,
                    inversion_efficiency=0.96)
    with pytest.raises(ProtocolError, match="even number") as error:
        check_protocol("mprage", protocol)
    assert error.value.source == "n"
    for n in (2.0, 6.0, 176.0):
        protocol["n"] = n
        protocol["tr"] = 0.4 + n * 0.01 + 0.5
        protocol["ti"] = 0.05 + n * 0.005
        check_protocol("mprage", protocol)
        s = mprage(torch.ones(2, dtype=F64), torch.tensor([0.7, 1.1], dtype=F64), torch.zeros(2, dtype=F64),
                   **protocol)
        assert torch.all(torch.isfinite(s)), (n, s)


# ---------------------------------------------------------------------------------------------------------------
# Batching: a 1-D protocol of length B equals a loop over B single protocols.


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_batched_protocols_equal_a_loop(sequence, make_maps):
    maps = make_maps((3, 4, 5), with_r2=True, with_mt=True)
    protocol = sample_protocol(sequence, 6, generator=torch.Generator().manual_seed(3))
    batched = call_sequence(sequence, maps, protocol)
    assert batched.shape == (6, 3, 4, 5)
    for b in range(6):
        single = call_sequence(sequence, maps, protocol_item(protocol, b))
        assert single.shape == (3, 4, 5)
        torch.testing.assert_close(batched[b], single, rtol=1e-12, atol=1e-15)
    # The items really differ (the batch is not one protocol repeated).
    assert not torch.allclose(batched[0], batched[1])


# ---------------------------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck w.r.t. maps and protocol parameters)


def _gradcheck_inputs(sequence, batch=None):
    g = torch.Generator().manual_seed(11)

    def u(low, high, shape=(2,)):
        return (low + (high - low) * torch.rand(shape, generator=g, dtype=F64)).requires_grad_(True)

    maps = {"pd": u(0.5, 1.0), "r1": u(0.3, 1.5), "r2": u(5.0, 15.0), "r2s": u(15.0, 30.0), "mt": u(0.0, 0.05),
            "b1": u(0.8, 1.2)}
    protocol = dict(TYPICAL_PROTOCOLS[sequence])
    if sequence == "mprage":
        protocol.update(n=16.0, tx=0.01, flip_angle=math.radians(12.0))
    check_protocol(sequence, protocol)
    if batch:
        # n is a count (an even integer), so the second protocol keeps it; every other parameter is nudged.
        params = {k: torch.tensor([v, v if k == "n" else v * 0.97], dtype=F64).requires_grad_(True)
                  for k, v in protocol.items()}
        check_protocol(sequence, params)
    else:
        params = {k: torch.tensor(v, dtype=F64).requires_grad_(True) for k, v in protocol.items()}
    return maps, params


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_gradcheck_maps_and_protocol(sequence, batch):
    maps, params = _gradcheck_inputs(sequence, batch)
    map_names = list(maps)
    param_names = list(params)

    def fn(*tensors):
        m = dict(zip(map_names, tensors[: len(map_names)]))
        p = dict(zip(param_names, tensors[len(map_names):]))
        return call_sequence(sequence, m, p, b1=m["b1"])

    inputs = tuple(maps.values()) + tuple(params.values())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_rician_noise_wrt_signal_and_sigma():
    signal = torch.tensor([[0.5, 1.0, 2.0], [0.7, 1.5, 3.0]], dtype=F64, requires_grad=True)
    sigma = torch.tensor(0.1, dtype=F64, requires_grad=True)
    # The generator is re-seeded inside the function, so every evaluation draws the same noise.
    fn = lambda s, sd: rician_noise(s, sd, generator=torch.Generator().manual_seed(5))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (signal, sigma), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Devices and dtypes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_dtype_follows_the_maps(sequence, device, make_maps):
    protocol = sample_protocol(sequence, 2, generator=torch.Generator().manual_seed(1))  # float64 tensors
    assert all(v.dtype == F64 for v in protocol.values())
    maps64 = make_maps((2, 3, 4), dtype=F64, device=device, with_r2=True, with_mt=True)
    maps32 = {k: v.float() for k, v in maps64.items()}
    out32 = call_sequence(sequence, maps32, protocol)
    out64 = call_sequence(sequence, maps64, protocol)
    assert out32.dtype == torch.float32 and out64.dtype == F64
    assert out32.device.type == device and out64.device.type == device
    assert out32.shape == out64.shape == (2, 2, 3, 4)
    scale = out64.abs().max()
    assert ((out32.double() - out64).abs().max() / scale).item() < 1e-4
    # float32 protocols with float64 maps: the maps' dtype still wins.
    protocol32 = {k: v.float() for k, v in protocol.items()}
    assert call_sequence(sequence, maps64, protocol32).dtype == F64


@pytest.mark.parametrize("device", DEVICES)
def test_rician_noise_keeps_dtype_and_device(device):
    for dtype in (torch.float32, F64):
        s = torch.ones(4, 5, dtype=dtype, device=device)
        g = torch.Generator(device=device).manual_seed(0)
        out = rician_noise(s, torch.tensor(0.1, dtype=F64), generator=g)
        assert out.dtype == dtype and out.device.type == device


# ---------------------------------------------------------------------------------------------------------------
# Rician noise


def test_rician_with_zero_sigma_is_the_magnitude():
    s = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0], dtype=F64)
    torch.testing.assert_close(rician_noise(s, 0.0), s.abs(), rtol=0, atol=0)


def test_rician_of_zero_signal_is_rayleigh():
    sigma, n = 0.3, 400_000
    m = rician_noise(torch.zeros(n, dtype=F64), sigma, generator=torch.Generator().manual_seed(0))
    assert torch.all(m >= 0)
    rayleigh_mean = sigma * math.sqrt(math.pi / 2)
    rayleigh_std = sigma * math.sqrt((4 - math.pi) / 2)
    assert abs(m.mean().item() - rayleigh_mean) < 5 * rayleigh_std / math.sqrt(n)
    assert m.std().item() == pytest.approx(rayleigh_std, rel=0.01)
    # Rayleigh CDF: P(M <= sigma) = 1 - exp(-1/2)
    assert (m <= sigma).double().mean().item() == pytest.approx(1 - math.exp(-0.5), abs=0.005)


@pytest.mark.parametrize("s", [0.5, 2.0, 10.0])
def test_rician_second_moment_and_high_snr_mean(s):
    sigma, n = 1.0, 200_000
    m = rician_noise(torch.full((n,), s, dtype=F64), sigma, generator=torch.Generator().manual_seed(1))
    # E[M^2] = S^2 + 2 sigma^2 exactly, for every S.
    assert (m**2).mean().item() == pytest.approx(s**2 + 2 * sigma**2, rel=0.01)
    if s >= 10:
        assert m.mean().item() == pytest.approx(math.sqrt(s**2 + sigma**2), rel=1e-3)
        assert m.std().item() == pytest.approx(sigma, rel=0.02)


def test_rician_generator_reproducibility_and_batched_sigma():
    s = torch.ones(3, 1000, dtype=F64)
    a = rician_noise(s, 0.2, generator=torch.Generator().manual_seed(42))
    b = rician_noise(s, 0.2, generator=torch.Generator().manual_seed(42))
    c = rician_noise(s, 0.2, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # A 1-D sigma of length B gives one sigma per item of the leading axis.
    sigma = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    z = rician_noise(torch.zeros(3, 50_000, dtype=F64), sigma, generator=torch.Generator().manual_seed(0))
    assert torch.all(z[0] == 0)
    second_moment = (z**2).mean(dim=1)
    torch.testing.assert_close(second_moment[1:], 2 * sigma[1:] ** 2, rtol=0.03, atol=0)


def test_rician_negative_sigma_raises():
    with pytest.raises(ValueError, match="sigma"):
        rician_noise(torch.ones(3), -0.1)
    with pytest.raises(ValueError, match="sigma"):
        rician_noise(torch.ones(2, 3), torch.tensor([0.1, -0.1]))
