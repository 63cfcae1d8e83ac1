"""Tests of ContrastiveViewPair: the two-view generator of the sequence-invariant contrastive method."""

from __future__ import annotations

import math

import pytest
import torch

import mri_ssl.transforms.views as views_module
from mri_ssl.errors import InputError
from mri_ssl.physics.protocols import sample_protocol
from mri_ssl.transforms.views import ContrastiveViewPair, zscore

MODES = ("base", "seqaug", "seqinv")
NO_CORRUPTION = dict(bias_field_prob=0.0, gibbs_prob=0.0, rician_prob=0.0, dropout_prob=0.0)
ALL_CORRUPTION = dict(bias_field_prob=1.0, gibbs_prob=1.0, rician_prob=1.0, dropout_prob=1.0)
NO_SPATIAL = dict(rotate_range_deg=0.0, shear_range=0.0, scale_range=0.0, flip_prob=0.0)
# Holes scaled to the small test crops (the defaults, 5-24 voxels, are meant for 96^3).
SMALL_HOLES = dict(dropout_size=(2, 5))


def sphere_maps(batch: int = 2, size: int = 24, dtype=torch.float32) -> torch.Tensor:
    """Off-centre nested spheres of WM, GM and CSF in background, ``(batch, 4, size, size, size)``: pd, r1, r2s, mt."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    radius = torch.sqrt((x - 0.25) ** 2 + (y + 0.1) ** 2 + (1.3 * z) ** 2)
    wm = (radius < 0.35).double()
    gm = ((radius >= 0.35) & (radius < 0.55)).double()
    csf = ((radius >= 0.55) & (radius < 0.75)).double()
    background = 1.0 - wm - gm - csf
    maps = torch.stack([
        0.69 * wm + 0.80 * gm + 1.00 * csf,
        1.15 * wm + 0.68 * gm + 0.23 * csf + 1.0 * background,
        20.5 * wm + 15.5 * gm + 1.0 * csf + 20.0 * background,
        0.018 * wm + 0.009 * gm,
    ])
    return maps.expand(batch, -1, -1, -1, -1).clone().to(dtype)


def blob_image(batch: int = 2, size: int = 24) -> torch.Tensor:
    """An off-centre Gaussian blob on a faint ramp, ``(batch, 1, size, size, size)``: a 'real' image."""
    axis = torch.arange(size, dtype=torch.float32)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    blob = torch.exp(-((x - 0.3 * size) ** 2 + (y - 0.5 * size) ** 2 + (z - 0.5 * size) ** 2) / (2 * 3.0**2))
    image = blob + 0.01 * x / size
    return image.expand(batch, 1, -1, -1, -1).clone()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def make_pair(mode: str, **kwargs) -> ContrastiveViewPair:
    options = dict(crop_size=16, **SMALL_HOLES)
    options.update(kwargs)
    return ContrastiveViewPair(mode, **options).set_random_state(0)


# ----------------------------------------------------------------------------------------------------------------
# Shapes, normalisation, corruption


@pytest.mark.parametrize("mode", MODES)
def test_output_shapes_dtypes_devices_and_zscoring(mode):
    maps = sphere_maps(batch=2, dtype=torch.float64)
    out = make_pair(mode, **ALL_CORRUPTION)(maps)
    assert set(out) == {"view1", "view2", "target1", "target2", "sequence1", "sequence2", "protocol1", "protocol2"}
    for key in ("view1", "view2", "target1", "target2"):
        image = out[key]
        assert type(image) is torch.Tensor  # plain tensor, not a MetaTensor
        assert image.shape == (2, 1, 16, 16, 16) and image.dtype == torch.float32 and image.device == maps.device
        assert torch.isfinite(image).all()
        for item in image:  # z-scored per item and view
            assert abs(float(item.mean())) < 1e-4 and abs(float(item.std(unbiased=False)) - 1.0) < 1e-3
    for key in ("sequence1", "sequence2", "protocol1", "protocol2"):
        assert len(out[key]) == 2
    assert all(isinstance(s, str) for s in out["sequence1"] + out["sequence2"])
    assert all(isinstance(v, float) for p in out["protocol1"] + out["protocol2"] for v in p.values())


@pytest.mark.parametrize("mode", MODES)
def test_views_differ_and_targets_are_clean_views(mode):
    out = make_pair(mode, crop_size=20, **ALL_CORRUPTION)(sphere_maps(batch=2))
    for b in range(2):
        assert not torch.allclose(out["view1"][b], out["view2"][b], atol=1e-3)
        for i in ("1", "2"):
            view, target = out["view" + i][b], out["target" + i][b]
            assert not torch.allclose(view, target, atol=1e-3)  # corruption applied
            assert correlation(view, target) > 0.5  # but the same spatial content


@pytest.mark.parametrize("mode", MODES)
def test_without_corruption_view_equals_target(mode):
    out = make_pair(mode, **NO_CORRUPTION)(sphere_maps(batch=2))
    torch.testing.assert_close(out["view1"], out["target1"])
    torch.testing.assert_close(out["view2"], out["target2"])
    assert not torch.allclose(out["target1"], out["target2"], atol=1e-3)  # spatial augmentation still differs


def test_real_image_base_views():
    pair = make_pair("base", input_is_image=True, **ALL_CORRUPTION)
    out = pair(blob_image(batch=2))
    assert out["view1"].shape == (2, 1, 16, 16, 16)
    assert out["sequence1"] == ["image", "image"] and out["protocol1"] == [{}, {}]
    assert not torch.allclose(out["view1"], out["view2"], atol=1e-3)
    assert correlation(out["view1"][0], out["target1"][0]) > 0.5


def test_already_normalised_real_image_is_accepted():
    image = zscore(blob_image(batch=1))  # negative values: shifted to a magnitude image before Rician noise
    out = make_pair("base", input_is_image=True, **ALL_CORRUPTION)(image)
    assert torch.isfinite(out["view1"]).all() and correlation(out["view1"], out["target1"]) > 0.5


def test_smaller_volume_is_centred_and_zero_padded():
    image = blob_image(batch=1, size=12) + 1.0  # positive everywhere, so the padding stands out
    out = make_pair("base", input_is_image=True, **NO_SPATIAL, **NO_CORRUPTION)(image)
    expected = zscore(torch.nn.functional.pad(image[0], (2, 2, 2, 2, 2, 2)))
    torch.testing.assert_close(out["target1"][0], expected)


def test_larger_volume_crop_position_varies():
    maps = sphere_maps(batch=8, size=32)
    out = make_pair("seqaug", **NO_SPATIAL, **NO_CORRUPTION)(maps)
    # Same acquisition, no rotation or flips: only the crop position differs between the two views.
    assert not torch.allclose(out["target1"], out["target2"], atol=1e-3)


def test_elastic_deformation_runs():
    out = make_pair("seqinv", elastic=True, elastic_sigma_range=(2.0, 3.0))(sphere_maps(batch=1, size=20))
    assert out["view1"].shape == (1, 1, 16, 16, 16) and torch.isfinite(out["view1"]).all()


# ----------------------------------------------------------------------------------------------------------------
# Acquisitions per mode


def test_seqinv_views_have_different_acquisitions_for_every_item():
    out = make_pair("seqinv", crop_size=4, **NO_CORRUPTION)(sphere_maps(batch=40, size=6))
    pairs = list(zip(out["sequence1"], out["protocol1"], out["sequence2"], out["protocol2"]))
    assert all((s1, p1) != (s2, p2) for s1, p1, s2, p2 in pairs)
    assert len(set(out["sequence1"])) > 1 and any(s1 != s2 for s1, _, s2, _ in pairs)


def test_seqinv_redraws_an_identical_second_acquisition(monkeypatch):
    fixed = sample_protocol("gre", 1, torch.Generator().manual_seed(1))
    calls = []

    def repeating_sampler(sequence, n, generator):
        calls.append(sequence)
        # The first three draws are the same protocol, then the real sampler takes over.
        return fixed if len(calls) <= 3 else sample_protocol(sequence, n, generator)

    monkeypatch.setattr(views_module, "sample_protocol", repeating_sampler)
    out = make_pair("seqinv", crop_size=4, sequences=("gre",), **NO_CORRUPTION)(sphere_maps(batch=1, size=6))
    assert len(calls) == 4  # first draw, two identical redraws rejected, one accepted
    assert out["sequence1"] == out["sequence2"] == ["gre"]
    assert out["protocol1"][0] != out["protocol2"][0]


def test_seqinv_gives_up_on_a_constant_sampler(monkeypatch):
    fixed = sample_protocol("gre", 1, torch.Generator().manual_seed(1))
    monkeypatch.setattr(views_module, "sample_protocol", lambda sequence, n, generator: fixed)
    with pytest.raises(RuntimeError, match="seqinv"):
        make_pair("seqinv", crop_size=4, sequences=("gre",))(sphere_maps(batch=1, size=6))


def test_seqaug_shares_the_acquisition_within_an_item_and_varies_across_items():
    out = make_pair("seqaug", crop_size=4, **NO_CORRUPTION)(sphere_maps(batch=24, size=6))
    assert out["sequence1"] == out["sequence2"] and out["protocol1"] == out["protocol2"]
    assert len(set(out["sequence1"])) > 1


def test_base_from_maps_is_one_mprage_per_item():
    out = make_pair("base", crop_size=4, **NO_CORRUPTION)(sphere_maps(batch=6, size=6))
    assert out["sequence1"] == out["sequence2"] == ["mprage"] * 6
    assert out["protocol1"] == out["protocol2"]
    assert len({p["tr"] for p in out["protocol1"]}) == 6  # a random protocol per item


# ----------------------------------------------------------------------------------------------------------------
# Reproducibility


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_pairs_different_seed_different_pairs(mode):
    maps = sphere_maps(batch=2)
    pair = make_pair(mode, **ALL_CORRUPTION)
    first = pair.set_random_state(7)(maps)
    again = pair.set_random_state(7)(maps)
    other = pair.set_random_state(8)(maps)
    for key in ("view1", "view2", "target1", "target2"):
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
        assert not torch.allclose(first[key], other[key])
    for key in ("sequence1", "sequence2", "protocol1", "protocol2"):
        assert first[key] == again[key]


# ----------------------------------------------------------------------------------------------------------------
# Rotation range in degrees (the reference passed 15 to MONAI, which reads radians)


def _record_rotations(pair: ContrastiveViewPair) -> list[list[float]]:
    grid = pair.spatial.rand_affine_grid
    seen: list[list[float]] = []
    randomize = grid.randomize

    def recording_randomize(*args, **kwargs):
        randomize(*args, **kwargs)
        seen.append(list(grid.rotate_params))

    grid.randomize = recording_randomize
    return seen


def test_rotation_range_is_in_degrees():
    pair = make_pair("base", input_is_image=True, crop_size=8, **{**NO_SPATIAL, "rotate_range_deg": 15.0},
                     **NO_CORRUPTION)
    assert pair.spatial.rand_affine_grid.rotate_range == pytest.approx((math.pi / 12,) * 3)
    seen = _record_rotations(pair)
    pair(blob_image(batch=50, size=8))
    angles = torch.tensor(seen).abs()
    # MONAI's RandAffine redraws its grid parameters inside the grid call, so 100 views record >= 100 draws; the
    # applied ones are among them.
    assert angles.shape[0] >= 100 and angles.shape[1] == 3
    assert float(angles.max()) <= math.radians(15.0) + 1e-12  # 0.2618 rad
    assert float(angles.max()) > math.radians(10.0)  # the range is used, not collapsed to zero


def test_rotated_views_stay_aligned_with_the_unrotated_image():
    image = blob_image(batch=20, size=24)
    reference = zscore(image[0])
    pair = make_pair("base", input_is_image=True, crop_size=24, **{**NO_SPATIAL, "rotate_range_deg": 15.0},
                     **NO_CORRUPTION)
    out = pair(image)
    worst = min(correlation(out[k][b], reference) for k in ("target1", "target2") for b in range(20))
    assert worst > 0.5
    # The reference implementation's bug, 15 read as radians, would rotate the blob anywhere: the check must see it.
    pair.spatial.rand_affine_grid.rotate_range = (15.0,) * 3
    out = pair(image)
    worst = min(correlation(out[k][b], reference) for k in ("target1", "target2") for b in range(20))
    assert worst < 0.5


# ----------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(mode="simclr"), "mode"),
        (dict(mode="seqinv", input_is_image=True), "input_is_image"),
        (dict(crop_size=(16, 16)), "crop_size"),
        (dict(crop_size=(16, 0, 16)), "crop_size"),
        (dict(crop_size=(16.5, 16, 16)), "crop_size"),
        (dict(crop_size=-4), "crop_size"),
        (dict(map_names=("pd", "r1", "mt")), "map_names"),
        (dict(map_names=("pd", "r1", "r2s", "t2")), "map_names"),
        (dict(sequences=("gre", "dwi")), "sequences"),
        (dict(sequences=()), "sequences"),
        (dict(rotate_range_deg=-5.0), "rotate_range_deg"),
        (dict(rotate_range_deg=860.0), "rotate_range_deg"),
        (dict(flip_prob=-0.1), "flip_prob"),
        (dict(bias_field_prob=-0.5), "bias_field_prob"),
        (dict(gibbs_prob=1.5), "gibbs_prob"),
        (dict(rician_prob=-1.0), "rician_prob"),
        (dict(dropout_prob=2.0), "dropout_prob"),
        (dict(rician_std=-0.2), "rician_std"),
        (dict(gibbs_alpha=1.5), "gibbs_alpha"),
        (dict(dropout_holes=(0, 10)), "dropout_holes"),
        (dict(dropout_size=(24, 5)), "dropout_size"),
        (dict(shear_range=-0.1), "shear_range"),
        (dict(scale_range=float("nan")), "scale_range"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(InputError) as error:
        ContrastiveViewPair(**kwargs)
    assert error.value.source == name


def test_map_names_are_not_checked_for_image_input():
    ContrastiveViewPair("base", input_is_image=True, map_names=("t1w",))


@pytest.mark.parametrize(
    "maps",
    [
        torch.ones(4, 8, 8, 8),  # no batch axis
        torch.ones(1, 3, 8, 8, 8),  # three channels for four map names
        torch.ones(1, 4, 8, 8),  # 2-D
    ],
)
def test_bad_input_shape_is_an_input_error(maps):
    with pytest.raises(InputError) as error:
        make_pair("seqinv", crop_size=4)(maps)
    assert error.value.source == "maps" and "(B, 4, X, Y, Z)" in str(error.value)


def test_out_of_range_maps_are_an_input_error():
    maps = sphere_maps(batch=1, size=6)
    maps[0, 1, 2, 2, 2] = -1.0  # negative R1
    with pytest.raises(InputError) as error:
        make_pair("seqinv", crop_size=4)(maps)
    assert error.value.source == "r1"


def test_image_input_needs_one_channel():
    with pytest.raises(InputError, match=r"\(B, 1, X, Y, Z\)"):
        make_pair("base", input_is_image=True, crop_size=4)(torch.ones(1, 2, 6, 6, 6))


def test_constant_crop_gives_zeros_not_nan():
    out = make_pair("base", input_is_image=True, crop_size=8, **NO_CORRUPTION)(torch.zeros(1, 1, 8, 8, 8))
    assert torch.equal(out["view1"], torch.zeros_like(out["view1"]))


# ----------------------------------------------------------------------------------------------------------------
# Device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_views_stay_on_the_input_device(mode):
    maps = sphere_maps(batch=2).cuda()
    out = make_pair(mode, elastic=(mode == "seqinv"), **ALL_CORRUPTION)(maps)
    for key in ("view1", "view2", "target1", "target2"):
        assert out[key].device == maps.device and out[key].dtype == torch.float32
        assert torch.isfinite(out[key]).all()


@pytest.mark.parametrize("shared", [False, True])
def test_shared_view_geometry_gives_both_views_one_spatial_draw(shared):
    # seqaug: one acquisition per item, so with one spatial draw and no corruption the two targets are identical.
    out = make_pair("seqaug", shared_view_geometry=shared, **NO_CORRUPTION)(sphere_maps(batch=3))
    same = [torch.equal(out["target1"][i], out["target2"][i]) for i in range(3)]
    assert same == [shared] * 3
    # seqinv: the contrasts differ, but the background (no proton density, no signal under any sequence) covers
    # the same voxels of both views exactly when they share the crop, rotation and flips.
    out = make_pair("seqinv", shared_view_geometry=shared, **NO_CORRUPTION)(sphere_maps(batch=3))
    for i in range(3):
        background1 = out["target1"][i] == out["target1"][i].min()
        background2 = out["target2"][i] == out["target2"][i].min()
        assert torch.equal(background1, background2) == shared
