"""The MNI152 qMRI phantom: grid, labels, physical maps, reproducibility, smooth variation and fidelity to real data.

Most tests use the 2 mm grid (fast); one builds the 1 mm phantom to check the key requirement at full resolution.
Pure-tissue voxels are selected with nilearn's own 2 mm templates, independently of the phantom's code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nilearn import datasets
from scipy import ndimage

from mri_ssl.errors import InputError
from mri_ssl.physics import phantom as phantom_module
from mri_ssl.physics.phantom import (
    NOMINAL_TISSUE_PARAMETERS,
    TISSUE_CLASSES,
    Phantom,
    mni152_phantom,
    mprage_fidelity,
    tissue_parameters,
)
from mri_ssl.physics.protocols import SEQUENCES, TYPICAL_PROTOCOLS
from mri_ssl.physics.simulate import check_maps, simulate

QUANTITIES = ("pd", "r1", "r2", "r2s", "mt")
BACKGROUND, CSF, GM, WM, NON_BRAIN = range(5)


@pytest.fixture(scope="module")
def nominal_2mm() -> Phantom:
    return mni152_phantom(2.0)


@pytest.fixture(scope="module")
def subject_2mm() -> Phantom:
    return mni152_phantom(2.0, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def pure_tissue_2mm() -> dict[int, torch.Tensor]:
    """Voxels of nilearn's 2 mm grid that are at least 90 % one brain tissue, by nilearn's templates."""
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata(dtype=np.float32) > 0.5
    # Erode the mask so "CSF" means ventricles and deep sulci, not the mask's edge against the outside.
    inner_brain = ndimage.binary_erosion(brain, iterations=2)
    return {
        CSF: torch.from_numpy(inner_brain & (gm + wm < 0.1)),
        GM: torch.from_numpy(gm > 0.9),
        WM: torch.from_numpy(wm > 0.9),
    }


def test_tissue_classes_are_the_five_labels():
    assert TISSUE_CLASSES == ("background", "csf", "gm", "wm", "non_brain")


def test_grid_matches_nilearn_2mm(nominal_2mm):
    template = datasets.load_mni152_template(resolution=2)
    shape = template.shape
    assert shape == (99, 117, 95)
    np.testing.assert_allclose(nominal_2mm.affine, template.affine)
    assert nominal_2mm.affine.dtype == np.float64 and nominal_2mm.affine.shape == (4, 4)
    assert set(nominal_2mm.maps) == set(QUANTITIES)
    for name, values in nominal_2mm.maps.items():
        assert values.dtype == torch.float32 and tuple(values.shape) == shape, name
    assert nominal_2mm.labels.dtype == torch.int64 and tuple(nominal_2mm.labels.shape) == shape
    assert nominal_2mm.reference_t1.dtype == torch.float32 and tuple(nominal_2mm.reference_t1.shape) == shape
    assert nominal_2mm.brain_mask.dtype == torch.bool and tuple(nominal_2mm.brain_mask.shape) == shape

    # The resampled T1 and brain mask agree with nilearn's own 2 mm versions.
    nilearn_t1 = template.get_fdata(dtype=np.float32)
    r = np.corrcoef(nominal_2mm.reference_t1.numpy().ravel(), nilearn_t1.ravel())[0, 1]
    assert r > 0.99
    nilearn_mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    ours = nominal_2mm.brain_mask.numpy()
    dice = 2 * (ours & nilearn_mask).sum() / (ours.sum() + nilearn_mask.sum())
    assert dice > 0.97


def test_other_resolution_keeps_origin_and_field_of_view():
    phantom = mni152_phantom(1.5)
    assert tuple(phantom.labels.shape) == (131, 155, 126)
    np.testing.assert_allclose(np.diag(phantom.affine)[:3], [1.5, 1.5, 1.5])
    np.testing.assert_allclose(phantom.affine[:3, 3], [-98.0, -134.0, -72.0])
    # The last voxel stays inside the 1 mm template's field of view, less than one voxel from its edge.
    last = phantom.affine @ np.array([130, 154, 125, 1.0])
    assert np.all(last[:3] <= [98.0, 98.0, 116.0]) and np.all(last[:3] > np.array([98.0, 98.0, 116.0]) - 1.5)
    assert set(torch.unique(phantom.labels).tolist()) == set(range(5))
    check_maps(phantom.maps)


def test_labels_cover_every_class_and_follow_anatomy(nominal_2mm):
    labels = nominal_2mm.labels
    assert set(torch.unique(labels).tolist()) == set(range(len(TISSUE_CLASSES)))
    counts = torch.bincount(labels.flatten(), minlength=5)
    assert bool((counts > 1000).all()), counts
    # Inside the brain there is only brain tissue and CSF; corners of the field of view are air.
    assert set(torch.unique(labels[nominal_2mm.brain_mask]).tolist()) <= {CSF, GM, WM}
    assert int(labels[0, 0, -1]) == BACKGROUND and int(labels[-1, -1, -1]) == BACKGROUND
    # The scalp lies outside the skull: a gap of bone (background) separates it from the brain, and it is thin.
    distance_mm = 2.0 * ndimage.distance_transform_edt(~nominal_2mm.brain_mask.numpy())
    scalp_distance = distance_mm[labels.numpy() == NON_BRAIN]
    assert scalp_distance.min() >= 5.0 and scalp_distance.max() <= 20.0
    csf_outside_brain = distance_mm[(labels.numpy() == CSF) & ~nominal_2mm.brain_mask.numpy()]
    assert csf_outside_brain.max() <= 6.0


def test_labels_are_the_most_probable_class():
    anatomy = phantom_module._anatomy(2.0)
    probabilities = anatomy["probabilities"]
    torch.testing.assert_close(probabilities.sum(dim=0), torch.ones(probabilities.shape[1:]), atol=1e-5, rtol=0)
    assert float(probabilities.min()) >= 0.0 and float(probabilities.max()) <= 1.0 + 1e-6
    chosen = torch.gather(probabilities, 0, anatomy["labels"].long()[None])[0]
    torch.testing.assert_close(chosen, probabilities.max(dim=0).values)


def test_maps_mix_tissues_by_water_content():
    """PD adds up; every rate is the water-weighted mean of the tissues' rates (fast exchange)."""
    probabilities = phantom_module._anatomy(2.0)["probabilities"]
    maps = mni152_phantom(2.0).maps
    nominal = tissue_parameters()
    pd = torch.tensor([nominal[t]["pd"] for t in TISSUE_CLASSES]).reshape(5, 1, 1, 1)
    expected_pd = (probabilities * pd).sum(dim=0)
    torch.testing.assert_close(maps["pd"], expected_pd, atol=1e-5, rtol=1e-5)
    # Where there is water, air's tiny weight is negligible and R is exactly the PD-weighted mean.
    watery = expected_pd > 0.05
    for quantity in ("r1", "r2", "r2s", "mt"):
        rate = torch.tensor([nominal[t][quantity] for t in TISSUE_CLASSES]).reshape(5, 1, 1, 1)
        expected = (probabilities * pd * rate).sum(dim=0) / expected_pd.clamp_min(1e-12)
        # float32 sums: agreement to 0.1 %, far tighter than any other mixing rule (e.g. signal averaging) gives.
        torch.testing.assert_close(maps[quantity][watery], expected[watery], atol=1e-5, rtol=1e-3)


def test_maps_are_physical_and_pass_check_maps(nominal_2mm, subject_2mm):
    for phantom in (nominal_2mm, subject_2mm):
        check_maps(phantom.maps)
        maps = phantom.maps
        assert float(maps["pd"].min()) >= 0.0 and float(maps["pd"].max()) <= 1.0
        for rate in ("r1", "r2", "r2s"):
            assert float(maps[rate].min()) > 0.0, rate
        assert float(maps["mt"].min()) >= 0.0 and float(maps["mt"].max()) < 0.1
        # Physical order of magnitude at 3 T: T1 between 0.3 and 5 s, T2* above 30 ms.
        assert 0.2 <= float(maps["r1"].min()) and float(maps["r1"].max()) <= 3.5
        assert float(maps["r2s"].max()) < 40.0
        # R2* >= R2 wherever there is water: T2* includes the T2 decay.
        watery = maps["pd"] > 0.05
        assert bool((maps["r2s"][watery] >= maps["r2"][watery] - 1e-4).all())


def test_background_far_from_the_head_is_air(nominal_2mm, subject_2mm):
    labels = nominal_2mm.labels.numpy()
    distance_mm = 2.0 * ndimage.distance_transform_edt(labels == BACKGROUND)
    far = torch.from_numpy(distance_mm > 10.0)
    assert int(far.sum()) > 100_000
    for phantom in (nominal_2mm, subject_2mm):
        assert bool((phantom.labels[far] == BACKGROUND).all())
        assert bool((phantom.maps["pd"][far] == 0).all())
    # Pure air takes the background's nominal rates, finite and positive (no 0/0).
    for quantity in ("r1", "r2", "r2s"):
        values = nominal_2mm.maps[quantity][far]
        torch.testing.assert_close(values, torch.full_like(values, NOMINAL_TISSUE_PARAMETERS["background"][quantity]))


def test_pure_tissue_rates_are_ordered_and_near_nominal(nominal_2mm, pure_tissue_2mm):
    r1 = {tissue: float(nominal_2mm.maps["r1"][voxels].mean()) for tissue, voxels in pure_tissue_2mm.items()}
    assert r1[WM] > r1[GM] > r1[CSF]
    r2 = {tissue: float(nominal_2mm.maps["r2"][voxels].mean()) for tissue, voxels in pure_tissue_2mm.items()}
    assert r2[WM] > r2[GM] > r2[CSF]
    pd = {tissue: float(nominal_2mm.maps["pd"][voxels].mean()) for tissue, voxels in pure_tissue_2mm.items()}
    assert pd[CSF] > pd[GM] > pd[WM]
    for tissue, name in ((GM, "gm"), (WM, "wm")):
        for quantity in QUANTITIES:
            value = float(nominal_2mm.maps[quantity][pure_tissue_2mm[tissue]].median())
            nominal = NOMINAL_TISSUE_PARAMETERS[name][quantity]
            assert value == pytest.approx(nominal, rel=0.1), (name, quantity)


def test_nominal_tissue_parameters_are_published_3t_values():
    values = tissue_parameters()
    assert set(values) == set(TISSUE_CLASSES)
    for tissue in TISSUE_CLASSES:
        assert set(values[tissue]) == set(QUANTITIES)
    wm, gm, csf, scalp, air = (values[t] for t in ("wm", "gm", "csf", "non_brain", "background"))
    assert 1.1 <= wm["r1"] <= 1.2 and 13 <= wm["r2"] <= 14 and 20 <= wm["r2s"] <= 21
    assert 0.65 <= gm["r1"] <= 0.7 and 9.5 <= gm["r2"] <= 10.5 and 15 <= gm["r2s"] <= 16
    assert csf["pd"] == 1.0 and 1 / csf["r1"] == pytest.approx(4.3, abs=0.1) and csf["mt"] == 0.0
    assert wm["mt"] > gm["mt"] > csf["mt"]
    assert scalp["r1"] > wm["r1"]  # fat: the brightest tissue of a T1-weighted image
    assert air["pd"] == 0.0 and all(air[q] > 0 for q in ("r1", "r2", "r2s"))
    # A copy: changing it does not change the next phantom.
    values["wm"]["r1"] = 99.0
    assert tissue_parameters()["wm"]["r1"] != 99.0


def test_tissue_parameters_jitter_is_seeded_small_and_valid():
    first = tissue_parameters(torch.Generator().manual_seed(3))
    again = tissue_parameters(torch.Generator().manual_seed(3))
    other = tissue_parameters(torch.Generator().manual_seed(4))
    assert first == again
    assert first != other
    nominal = tissue_parameters()
    changes = []
    for tissue in TISSUE_CLASSES:
        for quantity in QUANTITIES:
            value, reference = first[tissue][quantity], nominal[tissue][quantity]
            if reference == 0:
                assert value == 0.0, (tissue, quantity)
                continue
            changes.append(abs(math.log(value / reference)))
        assert 0.0 <= first[tissue]["pd"] <= 1.0 and 0.0 <= first[tissue]["mt"] < 1.0
        assert all(first[tissue][q] > 0 for q in ("r1", "r2", "r2s"))
    assert max(changes) < 0.25 and np.mean(changes) > 0.005  # a few percent, not zero


def test_seeded_phantom_is_reproducible(subject_2mm):
    again = mni152_phantom(2.0, generator=torch.Generator().manual_seed(7))
    other = mni152_phantom(2.0, generator=torch.Generator().manual_seed(8))
    for quantity in QUANTITIES:
        assert torch.equal(subject_2mm.maps[quantity], again.maps[quantity]), quantity
        assert not torch.equal(subject_2mm.maps[quantity], other.maps[quantity]), quantity
    # The anatomy is the template's: a subject changes tissue values, not labels.
    assert torch.equal(subject_2mm.labels, other.labels)


def test_nominal_phantom_is_deterministic_and_independent_of_global_rng(nominal_2mm):
    torch.manual_seed(123)
    again = mni152_phantom(2.0)
    for quantity in QUANTITIES:
        assert torch.equal(nominal_2mm.maps[quantity], again.maps[quantity]), quantity
    assert torch.equal(nominal_2mm.labels, again.labels)
    # Each call returns its own tensors: editing one phantom leaves the cached anatomy alone.
    again.maps["pd"].zero_()
    again.labels.zero_()
    again.reference_t1.zero_()
    again.brain_mask.zero_()
    again.affine[0, 0] = 5.0
    fresh = mni152_phantom(2.0)
    assert torch.equal(fresh.maps["pd"], nominal_2mm.maps["pd"]) and torch.equal(fresh.labels, nominal_2mm.labels)
    assert torch.equal(fresh.reference_t1, nominal_2mm.reference_t1)
    assert torch.equal(fresh.brain_mask, nominal_2mm.brain_mask) and fresh.affine[0, 0] == 2.0


def test_spatial_field_is_smooth_and_a_few_percent():
    shape = (99, 117, 95)
    field = phantom_module._smooth_log_field(shape, 2.0, 0.03, torch.Generator().manual_seed(0))
    assert tuple(field.shape) == shape and bool((field > 0).all())
    assert 0.8 < float(field.min()) < 1.0 < float(field.max()) < 1.25
    value_range = float(field.max() - field.min())
    largest_step = max(float(field.diff(dim=axis).abs().max()) for axis in range(3))
    assert largest_step < 0.1 * value_range


def test_subject_variation_inside_one_tissue_is_smooth(nominal_2mm, subject_2mm, pure_tissue_2mm):
    """Within pure WM, subject / nominal varies by a few percent in space, slowly from voxel to voxel."""
    white = pure_tissue_2mm[WM]
    for quantity in QUANTITIES:
        log_ratio = torch.log(subject_2mm.maps[quantity][white] / nominal_2mm.maps[quantity][white])
        assert float(log_ratio.std()) > 0.004, quantity  # there is spatial variation
        assert float(log_ratio.abs().max()) < 0.3, quantity  # of a few percent
        full = torch.log(subject_2mm.maps[quantity] / nominal_2mm.maps[quantity])
        value_range = float(log_ratio.max() - log_ratio.min())
        for axis in range(3):
            both_white = white.narrow(axis, 1, white.shape[axis] - 1) & white.narrow(axis, 0, white.shape[axis] - 1)
            steps = full.diff(dim=axis)[both_white].abs()
            assert float(steps.mean()) < 0.05 * value_range, (quantity, axis)


def test_mprage_fidelity_2mm(nominal_2mm, subject_2mm):
    fidelity = mprage_fidelity(nominal_2mm)
    print(f"\n2 mm nominal: pearson {fidelity['pearson_r']:.4f}, spearman {fidelity['spearman_r']:.4f}, "
          f"{fidelity['voxels']:.0f} voxels")
    assert set(fidelity) == {"pearson_r", "spearman_r", "voxels"}
    assert fidelity["voxels"] == float(nominal_2mm.brain_mask.sum())
    assert fidelity["pearson_r"] >= 0.9
    assert fidelity["spearman_r"] >= 0.9
    # A random subject is still a faithful brain.
    subject = mprage_fidelity(subject_2mm)
    print(f"2 mm subject: pearson {subject['pearson_r']:.4f}, spearman {subject['spearman_r']:.4f}")
    assert subject["pearson_r"] >= 0.9


def test_mprage_fidelity_1mm():
    phantom = mni152_phantom(1.0)
    template = datasets.load_mni152_template(resolution=1)
    assert tuple(phantom.labels.shape) == template.shape == (197, 233, 189)
    np.testing.assert_allclose(phantom.affine, template.affine)
    np.testing.assert_array_equal(phantom.reference_t1.numpy(), template.get_fdata(dtype=np.float32))
    fidelity = mprage_fidelity(phantom)
    print(f"\n1 mm nominal: pearson {fidelity['pearson_r']:.4f}, spearman {fidelity['spearman_r']:.4f}, "
          f"{fidelity['voxels']:.0f} voxels")
    assert fidelity["pearson_r"] >= 0.9
    assert fidelity["spearman_r"] >= 0.9


@pytest.mark.parametrize("resolution_mm", [0, 0.0, -1.0, float("nan"), float("inf"), 0.1, "2", None, True])
def test_bad_resolution_raises_input_error(resolution_mm):
    with pytest.raises(InputError) as error:
        mni152_phantom(resolution_mm)
    assert error.value.source == "resolution_mm"
    assert "resolution_mm" in str(error.value)


def _tissue_means(image: torch.Tensor, pure_tissue: dict[int, torch.Tensor]) -> dict[int, float]:
    return {tissue: float(image[voxels].mean()) for tissue, voxels in pure_tissue.items()}


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_every_sequence_gives_the_expected_contrast(sequence, nominal_2mm, pure_tissue_2mm):
    image = simulate(nominal_2mm.maps, sequence, TYPICAL_PROTOCOLS[sequence])
    assert tuple(image.shape) == tuple(nominal_2mm.labels.shape)
    assert bool(torch.isfinite(image).all()) and float(image.min()) >= 0.0
    # Air (background more than 10 mm from any other class) gives no signal whatever the sequence.
    air = 2.0 * ndimage.distance_transform_edt(nominal_2mm.labels.numpy() == BACKGROUND) > 10.0
    assert float(image[torch.from_numpy(air)].max()) == 0.0
    mean = _tissue_means(image, pure_tissue_2mm)
    if sequence in ("mprage", "gre"):  # T1-weighted: the shorter T1, the brighter
        assert mean[WM] > mean[GM] > mean[CSF]
        scalp = float(image[nominal_2mm.labels == NON_BRAIN].mean())
        assert scalp > mean[WM]  # fat is bright on T1-weighted images
    elif sequence == "fse":  # T2-weighted (TR 4 s, TE 90 ms): the longer T2, the brighter
        assert mean[CSF] > mean[GM] > mean[WM]
    elif sequence == "flair":  # TI near CSF's null point: fluid dark, tissue T2-weighted
        assert mean[CSF] < 0.5 * mean[GM]
        assert mean[GM] > mean[WM]
