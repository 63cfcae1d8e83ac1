"""The tissue-contrast score of an acquisition and the view pair's contrast floor (``min_tissue_contrast``)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from scipy.optimize import brentq

import mri_ssl.physics.contrast as contrast_module
import mri_ssl.transforms.views as views_module
from mri_ssl.errors import InputError
from mri_ssl.parameters import check_bundle_parameters
from mri_ssl.physics.contrast import tissue_contrast, tissue_signals
from mri_ssl.physics.phantom import NOMINAL_TISSUE_PARAMETERS as TISSUES
from mri_ssl.physics.protocols import TYPICAL_PROTOCOLS
from mri_ssl.transforms.views import ContrastiveViewPair

NO_CORRUPTION = dict(bias_field_prob=0.0, gibbs_prob=0.0, rician_prob=0.0, dropout_prob=0.0)


def fse_signal(tissue: str, tr: float, te: float) -> float:
    """The closed form ``PD (1 - exp(-R1 TR)) exp(-R2 TE)``; without an r2 map R2* stands in for R2."""
    t = TISSUES[tissue]
    return t["pd"] * (1.0 - math.exp(-t["r1"] * tr)) * math.exp(-t["r2s"] * te)


def flat_fse_protocol(te: float = 0.002) -> dict[str, float]:
    """The FSE protocol whose TR makes grey and white matter equally bright: WM's faster R1 wins at short TR, GM's
    larger PD at long TR, so the two signals cross once in between."""
    tr = brentq(lambda tr: fse_signal("gm", tr, te) - fse_signal("wm", tr, te), 0.01, 10.0, xtol=1e-14)
    return {"tr": tr, "te": te}


def pair(floor: float, **kwargs) -> ContrastiveViewPair:
    return ContrastiveViewPair("seqinv", crop_size=4, dropout_size=(1, 2), min_tissue_contrast=floor,
                               **NO_CORRUPTION, **kwargs).set_random_state(0)


def test_contrast_is_the_smallest_signal_gap_over_the_brightest_tissue():
    tr, te = 4.0, 0.09
    signals = [fse_signal(t, tr, te) for t in ("csf", "gm", "wm")]
    expected = min(abs(a - b) for i, a in enumerate(signals) for b in signals[i + 1:]) / max(signals)
    assert tissue_signals("fse", {"tr": tr, "te": te}).tolist() == pytest.approx(signals, rel=1e-9)
    assert tissue_contrast("fse", {"tr": tr, "te": te}) == pytest.approx(expected, rel=1e-9)


def test_equal_grey_and_white_matter_signal_scores_zero_and_a_t1w_protocol_does_not():
    flat = flat_fse_protocol()
    assert fse_signal("gm", **flat) == pytest.approx(fse_signal("wm", **flat), rel=1e-9)
    assert tissue_contrast("fse", flat) < 1e-6
    # T1-weighted GRE and MPRAGE: CSF < GM < WM, each step well above 5 % of WM's signal.
    assert tissue_contrast("gre", TYPICAL_PROTOCOLS["gre"]) > 0.15
    assert tissue_contrast("mprage", TYPICAL_PROTOCOLS["mprage"]) > 0.3


def test_floor_rejects_the_flat_protocol_and_draws_again(monkeypatch):
    flat = {key: torch.tensor([value], dtype=torch.float64) for key, value in flat_fse_protocol().items()}
    calls = []

    def flat_first(sequence, n, generator):
        calls.append(sequence)
        return flat if len(calls) == 1 else {"tr": torch.tensor([4.0], dtype=torch.float64),
                                             "te": torch.tensor([0.09], dtype=torch.float64)}

    monkeypatch.setattr(views_module, "sample_protocol", flat_first)
    view_pair = ContrastiveViewPair("seqaug", crop_size=4, sequences=("fse",), min_tissue_contrast=0.05)
    view_pair.set_random_state(0)
    view_pair.randomize(1)
    (first, second), = view_pair.acquisitions
    assert len(calls) == 2  # the flat draw rejected, the T2-weighted one kept
    assert first == second == ("fse", {"tr": 4.0, "te": 0.09})


def test_without_a_floor_the_flat_protocol_is_kept(monkeypatch):
    flat = {key: torch.tensor([value], dtype=torch.float64) for key, value in flat_fse_protocol().items()}
    monkeypatch.setattr(views_module, "sample_protocol", lambda sequence, n, generator: flat)
    view_pair = ContrastiveViewPair("seqaug", crop_size=4, sequences=("fse",)).set_random_state(0)
    view_pair.randomize(1)
    assert view_pair.acquisitions[0][0][1]["tr"] == pytest.approx(float(flat["tr"]))


def test_every_drawn_acquisition_reaches_the_floor_and_the_paper_draws_do_not():
    floor = 0.15
    contrasts = {}
    for value in (0.0, floor):
        view_pair = pair(value)
        view_pair.randomize(40)
        contrasts[value] = [tissue_contrast(s, p) for item in view_pair.acquisitions for s, p in item]
    assert min(contrasts[floor]) >= floor
    assert min(contrasts[0.0]) < floor  # so the floor did something


def test_without_a_floor_no_contrast_is_computed_so_the_paper_draws_are_unchanged(monkeypatch):
    def fail(*args):
        raise AssertionError("the contrast was computed without a floor")

    monkeypatch.setattr(contrast_module, "tissue_contrast", fail)
    pair(0.0).randomize(8)
    with pytest.raises(AssertionError, match="without a floor"):
        pair(0.05).randomize(8)


def test_an_unreachable_floor_stops_with_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(contrast_module, "MAX_CONTRAST_DRAWS", 20)
    view_pair = pair(0.49, sequences=("mprage",))
    with pytest.raises(InputError, match="out of reach") as error:
        view_pair.randomize(1)
    assert error.value.source == "min_tissue_contrast"


@pytest.mark.parametrize("floor", [-0.1, 0.5, 1.0, float("nan"), "high"])
def test_bad_floor_is_an_input_error(floor):
    with pytest.raises(InputError) as error:
        ContrastiveViewPair(min_tissue_contrast=floor)
    assert error.value.source == "min_tissue_contrast"
    with pytest.raises(InputError) as error:
        check_bundle_parameters({"min_tissue_contrast": floor})
    assert error.value.source == "min_tissue_contrast"


# ------------------------------------------- the downstream training contrast (RandTrainingContrastd, Sim. aug.)


def training_maps(shape=(6, 7, 5)) -> dict:
    """Channel-first maps of one tissue per voxel band (CSF, GM, WM), with a label."""
    labels = torch.arange(shape[0])[:, None, None].expand(shape) % 3 + 1
    item = {name: torch.tensor([0.0] + [TISSUES[t][name] for t in ("gm", "wm", "csf")],
                               dtype=torch.float32)[labels][None] for name in ("pd", "r1", "r2s", "mt")}
    item["label"] = labels[None].to(torch.uint8)
    return item


def training_acquisitions(floor: float, items: int = 40, crop: bool = False) -> list[tuple[str, dict]]:
    from monai.transforms import RandSpatialCropd

    from mri_ssl.transforms import RandTrainingContrastd

    transform = RandTrainingContrastd(
        map_keys=("pd", "r1", "r2s", "mt"), min_tissue_contrast=floor, bias_field_prob=0.0, gibbs_prob=0.0,
        rician_prob=0.0, crop=RandSpatialCropd(keys=["image", "label"], roi_size=(4, 4, 4)) if crop else None)
    transform.set_random_state(3)
    drawn = []
    for _ in range(items):
        transform(training_maps())
        simulator = transform.simulate.simulator
        drawn.append((simulator.sequence, dict(simulator.protocol)))
    return drawn


@pytest.mark.parametrize("crop", [False, True])
def test_the_training_contrast_floor_keeps_only_acquisitions_that_reach_it(crop):
    names = ("pd", "r1", "r2s", "mt")
    unfloored = [tissue_contrast(s, p, names) for s, p in training_acquisitions(0.0, crop=crop)]
    assert min(unfloored) < 0.1  # the paper's draws include flat ones, so the floor has something to reject
    floored = [tissue_contrast(s, p, names) for s, p in training_acquisitions(0.1, crop=crop)]
    assert min(floored) >= 0.1
    # A draw that passes is kept as drawn: the floored stream is the unfloored one with the flat draws left out.
    assert set(round(c, 12) for c in floored) & set(round(c, 12) for c in unfloored)


def test_the_training_contrast_floor_redraws_the_protocol_and_keeps_the_sequences_probabilities():
    from mri_ssl.physics.protocols import SEQUENCES
    from mri_ssl.transforms import RandTrainingContrastd

    transform = RandTrainingContrastd(map_keys=("pd", "r1", "r2s", "mt"), min_tissue_contrast=0.2)
    transform.set_random_state(0)
    draws = 800
    counts = Counter()
    for _ in range(draws):
        transform.randomize()
        counts[transform.simulate.simulator.sequence] += 1
    # Uniform over the four sequences, as without a floor (binomial sd of a share 0.015; 0.06 is 4 sd). Redrawing
    # the sequence with the protocol would keep MPRAGE, whose protocols pass most often, in about 0.47 of the draws.
    assert set(counts) == set(SEQUENCES)
    assert all(abs(n / draws - 1 / len(SEQUENCES)) < 0.06 for n in counts.values()), counts


def test_a_floor_the_drawn_sequence_cannot_reach_stops_the_training_contrast_with_an_error_naming_it(monkeypatch):
    from mri_ssl.transforms import RandTrainingContrastd

    # No GRE protocol reaches a contrast of 0.45; the sequence is kept, so the floor cannot be met by drawing another.
    monkeypatch.setattr(contrast_module, "MAX_CONTRAST_DRAWS", 50)
    transform = RandTrainingContrastd(map_keys=("pd", "r1", "r2s", "mt"), sequences=("gre",), min_tissue_contrast=0.45)
    with pytest.raises(InputError, match="gre protocols") as error:
        transform.set_random_state(0).randomize()
    assert error.value.source == "min_tissue_contrast"


@pytest.mark.parametrize("crop", [False, True])
def test_the_training_contrast_without_a_floor_draws_the_paper_s_acquisitions_number_for_number(crop, monkeypatch):
    from mri_ssl.transforms import RandTrainingContrastd

    drawn = training_acquisitions(0.0, items=10, crop=crop)
    # Before the floor existed, an item's acquisition was the simulator's one draw: the same stream.
    monkeypatch.setattr(RandTrainingContrastd, "randomize", lambda self, data=None: self.simulate.randomize())
    assert repr(drawn) == repr(training_acquisitions(0.0, items=10, crop=crop))


@pytest.mark.parametrize("floor", [-0.1, 0.5, "high"])
def test_bad_training_contrast_floor_is_an_input_error(floor):
    from mri_ssl.transforms import RandTrainingContrastd

    with pytest.raises(InputError) as error:
        RandTrainingContrastd(min_tissue_contrast=floor)
    assert error.value.source == "min_tissue_contrast"
    with pytest.raises(InputError) as error:
        check_bundle_parameters({"simulation_min_tissue_contrast": floor})
    assert error.value.source == "simulation_min_tissue_contrast"
