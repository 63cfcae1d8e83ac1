"""Protocol sampling (the paper's distributions, made consistent by rejection) and protocol validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mri_ssl.errors import InputError, ProtocolError
from mri_ssl.physics import protocols
from mri_ssl.physics.protocols import (
    PROTOCOL_PARAMETERS,
    SEQUENCES,
    TYPICAL_PROTOCOLS,
    check_protocol,
    consistency_mask,
    protocol_item,
    protocol_size,
    sample_protocol,
)

N_DRAWS = 10_000


@pytest.fixture(scope="module")
def draws():
    """10,000 sampled protocols per sequence (drawn once for the module)."""
    return {s: sample_protocol(s, N_DRAWS, generator=torch.Generator().manual_seed(2024)) for s in SEQUENCES}


# ---------------------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_seeded_sampling_is_reproducible(sequence):
    a = sample_protocol(sequence, 20, generator=torch.Generator().manual_seed(1))
    b = sample_protocol(sequence, 20, generator=torch.Generator().manual_seed(1))
    c = sample_protocol(sequence, 20, generator=torch.Generator().manual_seed(2))
    assert set(a) == set(PROTOCOL_PARAMETERS[sequence])
    for key in a:
        assert a[key].dtype == torch.float64 and a[key].shape == (20,)
        assert torch.equal(a[key], b[key])
    varying = [k for k in a if k not in ("n", "inversion_efficiency")]
    assert all(not torch.equal(a[k], c[k]) for k in varying)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_every_sampled_protocol_is_consistent(sequence, draws):
    protocol = draws[sequence]
    assert protocol_size(protocol) == N_DRAWS
    assert all(v.shape == (N_DRAWS,) for v in protocol.values())
    assert bool(consistency_mask(sequence, protocol).all())
    check_protocol(sequence, protocol)  # the whole batch passes
    # The draws are distinct, not one protocol repeated.
    assert protocol["te"].unique().numel() > 0.99 * N_DRAWS


def test_sampled_ranges_follow_the_paper(draws):
    deg = math.radians
    gre = draws["gre"]
    assert gre["flip_angle"].min() >= deg(5.0) and gre["flip_angle"].max() <= deg(50.0)
    assert gre["flip_angle"].max() - gre["flip_angle"].min() > deg(44.0)  # the whole range is used
    assert gre["te"].min() >= 0.002 and gre["te"].max() <= 0.08
    assert gre["tr"].min() >= 0.005 and gre["tr"].max() <= 5.0

    fse = draws["fse"]
    for key in ("te", "tr"):
        assert fse[key].min() >= 0.001 and fse[key].max() <= 3.0

    flair = draws["flair"]
    assert flair["tr"].min() >= 0.001 and flair["tr"].max() <= 5.0
    assert flair["ti"].min() >= 0.001 and flair["ti"].max() <= 3.0

    mp = draws["mprage"]
    assert mp["ti"].min() >= 0.6 and mp["ti"].max() <= 0.9
    assert mp["tx"].min() >= 0.004 and mp["tx"].max() <= 0.008
    assert mp["te"].min() >= 0.002 and mp["te"].max() <= 0.004
    assert mp["flip_angle"].min() >= deg(5.0) and mp["flip_angle"].max() <= deg(12.0)
    assert torch.all(mp["n"] == protocols.MPRAGE_EXCITATIONS)
    assert torch.all(mp["inversion_efficiency"] == protocols.MPRAGE_INVERSION_EFFICIENCY)
    # TR ~ N(2.3, 0.23) s (the paper's "N(23, 2.3) s" is a unit slip); standard error of the mean is 0.0023 s.
    assert mp["tr"].mean().item() == pytest.approx(2.3, abs=0.01)
    assert mp["tr"].std().item() == pytest.approx(0.23, rel=0.05)


def _gre_log_te_cdf(u):
    """CDF of log10 TE for GRE after rejecting TE >= TR (TE, TR independent log-uniform draws)."""
    a, b = math.log10(0.002), math.log10(0.08)
    c, d = math.log10(0.005), math.log10(5.0)

    def weight_integral(x):  # integral from a to x of P(log10 TR > u) du
        x = np.clip(x, a, b)
        below = np.minimum(x, c) - a
        above = np.where(x > c, ((d - c) ** 2 - (d - np.maximum(x, c)) ** 2) / (2 * (d - c)), 0.0)
        return below + above

    return weight_integral(np.asarray(u)) / weight_integral(b)


def test_gre_log_te_follows_the_truncated_log_uniform(draws):
    log_te = torch.log10(draws["gre"]["te"]).numpy()
    # Quantiles of the truncated distribution (inverting its CDF numerically) against the sample's.
    grid = np.linspace(math.log10(0.002), math.log10(0.08), 20001)
    cdf = _gre_log_te_cdf(grid)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        expected = np.interp(q, cdf, grid)
        assert np.quantile(log_te, q) == pytest.approx(expected, abs=0.03)
    # Below log10(5 ms) no rejection can happen, so that part is exactly uniform: equal counts in equal bins.
    low = log_te[log_te < math.log10(0.005)]
    counts, _ = np.histogram(low, bins=4, range=(math.log10(0.002), math.log10(0.005)))
    assert counts.min() > 0.85 * counts.mean()
    scipy_stats = pytest.importorskip("scipy.stats")
    assert scipy_stats.kstest(log_te, _gre_log_te_cdf).pvalue > 1e-3


def test_flair_raw_log_te_is_normal_one_decade_wide():
    raw = protocols._draw("flair", 50_000, torch.Generator().manual_seed(3))
    log_te = torch.log10(raw["te"])
    assert log_te.mean().item() == pytest.approx(math.log10(0.02), abs=0.02)
    assert log_te.std().item() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_rejection_keeps_the_distribution_on_the_consistent_region(sequence, draws):
    """Sampled protocols are distributed as raw paper draws conditioned on consistency (two-sample KS)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    raw = protocols._draw(sequence, 30_000, torch.Generator().manual_seed(99))
    ok = consistency_mask(sequence, raw)
    for key in PROTOCOL_PARAMETERS[sequence]:
        if key in ("n", "inversion_efficiency"):
            continue
        result = scipy_stats.ks_2samp(draws[sequence][key].numpy(), raw[key][ok].numpy())
        assert result.pvalue > 1e-4, (key, result)


def test_raw_paper_distributions_would_give_inconsistent_protocols():
    g = torch.Generator().manual_seed(5)
    flair = protocols._draw("flair", 20_000, g)
    assert (flair["ti"] >= flair["tr"]).double().mean().item() > 0.4  # TI >= TR for about half of them
    assert (~consistency_mask("flair", flair)).double().mean().item() > 0.4
    gre = protocols._draw("gre", 20_000, g)
    assert (gre["te"] >= gre["tr"]).double().mean().item() > 0.1
    assert (~consistency_mask("gre", gre)).double().mean().item() > 0.1
    fse = protocols._draw("fse", 20_000, g)
    assert (~consistency_mask("fse", fse)).double().mean().item() > 0.4
    mp = protocols._draw("mprage", 20_000, g)
    assert (~consistency_mask("mprage", mp)).any()  # TI shorter than half the readout train happens
    with pytest.raises(ProtocolError):
        check_protocol("flair", flair)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_consistency_mask_agrees_with_check_protocol(sequence):
    raw = protocols._draw(sequence, 200, torch.Generator().manual_seed(8))
    mask = consistency_mask(sequence, raw)
    for i in range(200):
        item = protocol_item(raw, i)
        try:
            check_protocol(sequence, item)
            accepted = True
        except ProtocolError:
            accepted = False
        assert accepted == bool(mask[i]), item


def test_sample_protocol_bad_arguments():
    with pytest.raises(ProtocolError) as info:
        sample_protocol("fse", 0)
    assert info.value.source == "n"
    with pytest.raises(ProtocolError) as info:
        sample_protocol("dwi", 3)
    assert info.value.source == "sequence" and "dwi" in str(info.value)
    assert sample_protocol("GRE", 2, generator=torch.Generator().manual_seed(0))["tr"].shape == (2,)


# ---------------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_typical_protocols_are_valid(sequence):
    assert set(TYPICAL_PROTOCOLS[sequence]) == set(PROTOCOL_PARAMETERS[sequence])
    check_protocol(sequence, TYPICAL_PROTOCOLS[sequence])
    assert bool(consistency_mask(sequence, TYPICAL_PROTOCOLS[sequence]).all())


def _raises(sequence, protocol, source, mask=True):
    """check_protocol raises a ProtocolError naming ``source``; consistency_mask (when asked) flags it too."""
    with pytest.raises(ProtocolError) as info:
        check_protocol(sequence, protocol)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    assert info.value.source == source
    assert str(info.value).startswith(f"{source}:")
    if mask and set(protocol) >= set(PROTOCOL_PARAMETERS[sequence]):
        assert not bool(consistency_mask(sequence, protocol).all())
    return str(info.value)


def test_te_not_shorter_than_tr():
    message = _raises("fse", {"tr": 0.05, "te": 0.1}, "te")
    assert "te = 0.1" in message
    _raises("fse", {"tr": 0.1, "te": 0.1}, "te")  # equal is inconsistent too
    _raises("gre", {"tr": 0.01, "te": 0.02, "flip_angle": 0.3}, "te")


def test_flair_ti_not_shorter_than_tr():
    message = _raises("flair", {"tr": 2.0, "te": 0.09, "ti": 3.0}, "ti")
    assert "ti = 3" in message
    # TI < TR but the echo falls after the next inversion.
    message = _raises("flair", {"tr": 2.0, "te": 0.09, "ti": 1.95}, "ti")
    assert "1.95" in message


@pytest.mark.parametrize("flip_angle", [0.0, -0.3, 4.0])
def test_flip_angle_outside_zero_to_pi(flip_angle):
    message = _raises("gre", {"tr": 0.02, "te": 0.005, "flip_angle": flip_angle}, "flip_angle")
    assert f"{flip_angle:.6g}" in message
    protocol = dict(TYPICAL_PROTOCOLS["mprage"], flip_angle=flip_angle)
    _raises("mprage", protocol, "flip_angle")


def test_flip_angle_of_pi_is_allowed():
    check_protocol("gre", {"tr": 0.02, "te": 0.005, "flip_angle": math.pi})


@pytest.mark.parametrize("key", ["tr", "te", "flip_angle"])
def test_nan_parameter(key):
    protocol = dict(TYPICAL_PROTOCOLS["gre"], **{key: float("nan")})
    message = _raises("gre", protocol, key)
    assert "nan" in message.lower()


def test_infinite_and_non_positive_times():
    _raises("fse", {"tr": float("inf"), "te": 0.01}, "tr")
    _raises("fse", {"tr": 1.0, "te": -0.01}, "te")
    _raises("flair", {"tr": 5.0, "te": 0.09, "ti": 0.0}, "ti")


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_missing_parameter(sequence):
    for key in PROTOCOL_PARAMETERS[sequence]:
        protocol = {k: v for k, v in TYPICAL_PROTOCOLS[sequence].items() if k != key}
        message = _raises(sequence, protocol, key)
        assert key in message


def test_unknown_sequence():
    with pytest.raises(ProtocolError) as info:
        check_protocol("dwi", {"tr": 1.0, "te": 0.1})
    assert info.value.source == "sequence"
    assert "dwi" in str(info.value) and "mprage" in str(info.value)


def test_mprage_timing_rules():
    base = TYPICAL_PROTOCOLS["mprage"]
    _raises("mprage", dict(base, te=0.008), "te")  # TE >= TX
    _raises("mprage", dict(base, ti=0.5), "ti")  # TI <= n TX / 2 = 0.56 s: no room before the train
    _raises("mprage", dict(base, tr=1.4), "tr")  # TR <= TI + n TX / 2 = 1.46 s
    _raises("mprage", dict(base, n=0.0), "n")
    _raises("mprage", dict(base, inversion_efficiency=0.0), "inversion_efficiency")
    _raises("mprage", dict(base, inversion_efficiency=1.2), "inversion_efficiency")
    check_protocol("mprage", dict(base, inversion_efficiency=1.0))


def test_batched_error_names_the_protocol_index():
    protocol = {"tr": torch.tensor([1.0, 2.0, 0.01]), "te": torch.tensor([0.1, 0.1, 0.1])}
    message = _raises("fse", protocol, "te")
    assert "protocol 2 of 3" in message
    assert consistency_mask("fse", protocol).tolist() == [True, True, False]


def test_check_protocol_with_mixed_scalar_and_batched_parameters():
    """A scalar next to 1-D tensors is one value shared by the batch (as ``protocol_size`` and ``simulate`` allow)."""
    good = {"tr": 1.0, "te": torch.tensor([0.01, 0.05, 0.1])}
    check_protocol("fse", good)
    assert protocol_size(good) == 3
    message = _raises("fse", {"tr": 1.0, "te": torch.tensor([0.01, 0.05, 1.5])}, "te", mask=False)
    assert "1.5" in message
    # The offending parameter (te) is the scalar here; its value must still be reported, not an IndexError.
    message = _raises("fse", {"tr": torch.tensor([1.0, 1.0, 0.05]), "te": 0.1}, "te", mask=False)
    assert "0.1" in message


def test_consistency_mask_with_mixed_scalar_and_batched_parameters():
    assert consistency_mask("fse", {"tr": 1.0, "te": torch.tensor([0.01, 0.05, 0.1])}).tolist() == [True] * 3
    assert consistency_mask("fse", {"tr": 1.0, "te": torch.tensor([0.01, 0.05, 1.5])}).tolist() == [True, True, False]
    assert consistency_mask("fse", {"tr": torch.tensor([1.0, 1.0, 0.05]), "te": 0.1}).tolist() == [True, True, False]


def test_protocol_size_and_item():
    assert protocol_size(TYPICAL_PROTOCOLS["gre"]) == 1
    assert protocol_size({"tr": torch.tensor([1.0, 2.0]), "te": 0.1}) == 2
    with pytest.raises(ProtocolError):
        protocol_size({"tr": torch.tensor([1.0, 2.0]), "te": torch.tensor([0.1, 0.2, 0.3])})
    item = protocol_item({"tr": torch.tensor([1.0, 2.0]), "te": torch.tensor([0.1, 0.2])}, 1)
    assert item == {"tr": 2.0, "te": pytest.approx(0.2)}
    assert all(isinstance(v, float) for v in item.values())
