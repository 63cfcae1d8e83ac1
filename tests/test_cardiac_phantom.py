"""The bSSFP equation against its closed forms and a Bloch simulation, and the cardiac phantom's physics."""

import math

import numpy as np
import pytest
import torch

from mri_ssl.errors import InputError
from mri_ssl.physics import bssfp, bssfp_optimal_flip_angle
from mri_ssl.physics.cardiac import (
    CARDIAC_TISSUES, OTHER_KINDS, SEQUENCE_CLASSES, TISSUE_INDEX, HeartAnatomy, contraction, lge_null_ti,
    lv_radii_mm, render_cine, render_series, render_slice, render_study, sample_anatomy, tissue_fractions,
    tissue_rates,
)


def bloch_bssfp_steady_state(r1, r2, tr, flip_angle, cycles=4000):
    """Brute-force steady state of an on-resonance bSSFP train with alternating RF phase: rotate, relax, repeat."""
    m = np.array([0.0, 0.0, 1.0])
    e1, e2 = math.exp(-r1 * tr), math.exp(-r2 * tr)
    for k in range(cycles):
        a = flip_angle if k % 2 == 0 else -flip_angle  # (0, 180 degree) phase cycling = alternating sign about x
        c, s = math.cos(a), math.sin(a)
        m = np.array([m[0], c * m[1] + s * m[2], -s * m[1] + c * m[2]])
        # Free precession over TR: on resonance there is no rotation, only relaxation (the echo sits at TR/2).
        m_echo = m * np.array([math.exp(-r2 * tr / 2), math.exp(-r2 * tr / 2), 1.0])
        m = np.array([m[0] * e2, m[1] * e2, 1.0 + (m[2] - 1.0) * e1])
    return math.hypot(m_echo[0], m_echo[1])


@pytest.mark.parametrize("r1, r2, tr, flip_deg", [(1.0, 20.0, 0.004, 60.0), (0.65, 4.0, 0.003, 50.0),
                                                  (2.9, 17.0, 0.01, 30.0)])
def test_bssfp_matches_a_bloch_simulation(r1, r2, tr, flip_deg):
    expected = bloch_bssfp_steady_state(r1, r2, tr, math.radians(flip_deg))
    got = float(bssfp(torch.tensor(1.0, dtype=torch.float64), r1, r2, tr=tr, flip_angle=math.radians(flip_deg)))
    assert got == pytest.approx(expected, rel=1e-6)


def test_bssfp_short_tr_limit_is_half_root_t2_over_t1_at_the_optimal_angle():
    r1, r2 = 1.0, 20.0
    angle = bssfp_optimal_flip_angle(r1, r2)
    assert math.cos(float(angle)) == pytest.approx((1 / r1 - 1 / r2) / (1 / r1 + 1 / r2))
    signal = bssfp(torch.tensor(1.0, dtype=torch.float64), r1, r2, tr=1e-6, te=0.0, flip_angle=angle)
    assert float(signal) == pytest.approx(0.5 * math.sqrt(r1 / r2), rel=1e-4)
    # And it is the maximum over flip angles.
    angles = torch.linspace(0.05, 3.0, 200, dtype=torch.float64)
    batch = bssfp(torch.tensor(1.0, dtype=torch.float64), r1, r2, tr=1e-6, te=0.0, flip_angle=angles)
    assert float(batch.max()) <= float(signal) + 1e-9


def test_bssfp_batches_protocols_and_blood_is_brighter_than_myocardium():
    rates = tissue_rates()
    pd = torch.tensor([rates["blood"]["pd"], rates["myocardium"]["pd"]])
    r1 = torch.tensor([rates["blood"]["r1"], rates["myocardium"]["r1"]])
    r2 = torch.tensor([rates["blood"]["r2"], rates["myocardium"]["r2"]])
    out = bssfp(pd, r1, r2, tr=torch.tensor([0.003, 0.004]), flip_angle=math.radians(60))
    assert out.shape == (2, 2)
    assert bool((out[:, 0] > 2 * out[:, 1]).all())


def test_lge_null_ti_nulls_the_inversion_recovery_signal():
    r1, tr = 1.8, 1.6
    ti = lge_null_ti(r1, tr)
    assert 1 - 2 * math.exp(-ti * r1) + math.exp(-tr * r1) == pytest.approx(0.0, abs=1e-12)
    assert ti == pytest.approx(math.log(2) / r1, rel=0.1)  # close to the long-TR rule


def test_fractions_sum_to_one_and_wall_area_is_conserved_over_the_cycle():
    anatomy = HeartAnatomy()
    fractions = tissue_fractions(anatomy, "short_axis", 0.2)
    assert fractions.shape == (len(CARDIAC_TISSUES), 84, 84)
    np.testing.assert_allclose(fractions.sum(axis=0), 1.0, atol=1e-5)
    areas = []
    for phase in (0.0, END := 0.35):
        inner, outer = lv_radii_mm(anatomy, phase)
        areas.append(outer ** 2 - inner ** 2)
    assert areas[0] == pytest.approx(areas[1])
    inner_ed, _ = lv_radii_mm(anatomy, 0.0)
    inner_es, _ = lv_radii_mm(anatomy, END)
    assert 1 - (inner_es / inner_ed) ** 2 == pytest.approx(anatomy.ejection_fraction)
    assert contraction(0.0) == 0.0 and contraction(0.35) == pytest.approx(1.0) and contraction(1.0) == 0.0


def test_blood_pool_area_follows_dilation_and_ejection_fraction():
    pixel_mm2 = (300.0 / 84) ** 2
    normal = HeartAnatomy(rv_scale=0.6, lv_radius_mm=22.0)
    dilated = normal.replace(lv_radius_mm=34.0)

    def lv_blood_mm2(anatomy, phase):
        fractions = tissue_fractions(anatomy, "short_axis", phase, supersampling=6)
        inner, _ = lv_radii_mm(anatomy, phase)
        return inner, fractions[TISSUE_INDEX["blood"]].sum() * pixel_mm2

    for anatomy in (normal, dilated):
        inner, area = lv_blood_mm2(anatomy, 0.0)
        rv_area = tissue_fractions(anatomy.replace(rv_scale=0.5), "short_axis", 0.0)[TISSUE_INDEX["blood"]].sum()
        assert area >= math.pi * inner ** 2 * 0.95
        assert rv_area > 0
    assert lv_blood_mm2(dilated, 0.0)[1] > lv_blood_mm2(normal, 0.0)[1] * 1.8


def test_lge_scar_is_bright_and_normal_myocardium_dark():
    anatomy = HeartAnatomy(scar_center_deg=0.0, scar_extent_deg=120.0, scar_transmurality=1.0)
    for view in ("short_axis", "long_axis"):
        image = render_slice(anatomy, "LGE", view=view, rng=np.random.default_rng(1), noise=False, shading=False)
        scar = image.labels == TISSUE_INDEX["scar"]
        myocardium = image.labels == TISSUE_INDEX["myocardium"]
        blood = image.labels == TISSUE_INDEX["blood"]
        assert scar.sum() > 5, view
        assert image.image[scar].mean() > 3 * image.image[myocardium].mean(), view
        assert image.image[blood].mean() > image.image[myocardium].mean(), view
    healthy = render_slice(anatomy.replace(scar_extent_deg=0.0), "LGE", rng=np.random.default_rng(1))
    assert not (healthy.labels == TISSUE_INDEX["scar"]).any()


def test_class_physics_contrasts():
    anatomy = HeartAnatomy()

    def mean(image, tissue):
        return image.image[image.labels == TISSUE_INDEX[tissue]].mean()

    rng = np.random.default_rng(0)
    images = {c: render_slice(anatomy, c, rng=rng, noise=False, shading=False) for c in ("T1", "T2", "Cine")}
    # Black-blood spin echoes: blood darker than myocardium; bSSFP cine: bright blood.
    assert mean(images["T1"], "blood") < 0.2 * mean(images["T1"], "myocardium")
    assert mean(images["T2"], "blood") < 0.5 * mean(images["T2"], "myocardium")
    assert mean(images["Cine"], "blood") > 2 * mean(images["Cine"], "myocardium")
    # T1-weighting makes fat far brighter than muscle; T2-weighting much less so relative to liver vs fat.
    assert mean(images["T1"], "fat") > 1.5 * mean(images["T1"], "muscle")
    assert mean(images["T2"], "liver") < mean(images["T2"], "myocardium")


def test_cine_frames_differ_over_time_and_share_one_protocol():
    anatomy = HeartAnatomy()
    frames = render_cine(anatomy, frames=6, rng=np.random.default_rng(2), noise=False)
    assert frames.shape == (6, 84, 84)
    bright = [(f > 0.6).sum() for f in frames]
    # End diastole (frame 0) holds more bright blood than end systole (phase 1/3 is frame 2): at EF 0.6 the LV
    # cavity of radius 25 mm (about 150 pixels of 3.6 mm) loses about 90 pixels, the RV some more.
    assert bright[0] - bright[2] > 60
    # Noise-free frames of one acquisition: identical background tissue (same protocol and shading).
    np.testing.assert_allclose(frames[0][:10], frames[3][:10], atol=1e-6)


def test_every_class_and_kind_renders_reproducibly():
    anatomy = sample_anatomy(np.random.default_rng(5))
    for sequence_class in SEQUENCE_CLASSES:
        kinds = OTHER_KINDS if sequence_class == "Other" else (None,)
        for kind in kinds:
            a = render_slice(anatomy, sequence_class, kind=kind, view="long_axis", rng=np.random.default_rng(7))
            b = render_slice(anatomy, sequence_class, kind=kind, view="long_axis", rng=np.random.default_rng(7))
            assert a.image.shape == (84, 84) and a.image.dtype == np.float32
            assert np.isfinite(a.image).all() and a.image.max() > 0.5
            np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("changes, name", [({"lv_radius_mm": 2.0}, "lv_radius_mm"),
                                           ({"ejection_fraction": float("nan")}, "ejection_fraction"),
                                           ({"scar_transmurality": 1.5}, "scar_transmurality")])
def test_nonsense_anatomy_is_rejected_by_name(changes, name):
    with pytest.raises(InputError, match=name):
        HeartAnatomy(**changes)


def test_bad_render_arguments_are_rejected():
    with pytest.raises(InputError, match="sequence_class"):
        render_slice(HeartAnatomy(), "FLAIR")
    with pytest.raises(InputError, match="phase"):
        render_slice(HeartAnatomy(), "Cine", phase=1.5)
    with pytest.raises(InputError, match="view"):
        tissue_fractions(HeartAnatomy(), "axial")


def test_noisy_cine_frames_share_the_noise_level_but_not_the_noise():
    frames = render_cine(HeartAnatomy(), frames=2, rng=np.random.default_rng(4))
    air_0, air_1 = frames[0][:8, :8], frames[1][:8, :8]  # the corner is air: pure Rician noise
    assert not np.array_equal(air_0, air_1)
    assert air_0.std() == pytest.approx(air_1.std(), rel=0.3)


def test_a_study_has_one_series_per_class_with_one_protocol_each():
    study = render_study(HeartAnatomy(), np.random.default_rng(0), slices=2, cine_frames=3)
    assert list(study) == list(SEQUENCE_CLASSES)
    for sequence_class, series in study.items():
        assert {image.sequence_class for image in series} == {sequence_class}
        assert len({image.kind for image in series}) == 1 and len({image.view for image in series}) == 1
        protocols = [{k: v for k, v in image.protocol.items()} for image in series]
        assert all(p == protocols[0] for p in protocols)
        slices = 2 if series[0].view == "short_axis" else 1
        assert len(series) == slices * (3 if sequence_class == "Cine" else 1)
    cine = render_series(HeartAnatomy(), "Cine", np.random.default_rng(1), slices=1, cine_frames=4,
                         view="short_axis")
    phases = [image.phase for image in cine]
    assert np.allclose(np.diff(phases), 0.25) and [image.frame for image in cine] == [0, 1, 2, 3]
