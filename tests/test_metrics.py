"""Dice, HD95 in mm (against a brute-force reference), the empty-structure policy, label checks and PSNR."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from mri_ssl.errors import InputError
from mri_ssl.metrics import (
    STATUS_ABSENT,
    STATUS_FALSE_POSITIVE,
    STATUS_MISSED,
    STATUS_OK,
    denoising_case_scores,
    dice_score,
    hd95_mm,
    max_distance_mm,
    psnr_db,
    score_structure,
    segmentation_case_scores,
)

ANISOTROPIC_MM = (0.8, 1.0, 2.5)
TISSUE_CLASSES = {0: "background", 1: "gm", 2: "wm", 3: "csf"}


def reference_hd95_mm(a: np.ndarray, b: np.ndarray, spacing_mm) -> float:
    """Brute force: boundary voxels by erosion, nearest-boundary distances in mm, max of the directed 95th pct."""
    scale = np.asarray(spacing_mm, dtype=np.float64)
    surface_a = np.argwhere(a & ~binary_erosion(a)) * scale
    surface_b = np.argwhere(b & ~binary_erosion(b)) * scale
    a_to_b = cKDTree(surface_b).query(surface_a)[0]
    b_to_a = cKDTree(surface_a).query(surface_b)[0]
    return max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))


def sphere(shape=(32, 32, 32), centre=(16, 16, 16), radius=5.0) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def box(shape, corner, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
    return mask


# HD95 ---------------------------------------------------------------------------------------------------------------

def test_hd95_of_single_voxels_is_their_euclidean_distance_in_mm():
    a, b = np.zeros((10, 12, 14), bool), np.zeros((10, 12, 14), bool)
    a[3, 4, 5] = b[6, 8, 7] = True
    expected = math.sqrt((3 * 0.8) ** 2 + (4 * 1.0) ** 2 + (2 * 2.5) ** 2)
    assert hd95_mm(a, b, ANISOTROPIC_MM) == pytest.approx(expected, rel=1e-6)
    assert hd95_mm(b, a, ANISOTROPIC_MM) == pytest.approx(expected, rel=1e-6)


def test_hd95_of_single_pixels_in_2d():
    a, b = np.zeros((8, 9), bool), np.zeros((8, 9), bool)
    a[1, 1] = b[4, 5] = True
    assert hd95_mm(a, b, (2.0, 0.5)) == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5), rel=1e-6)


@pytest.mark.parametrize("offset_voxels", [1, 3])
@pytest.mark.parametrize("axis", [0, 2])
def test_hd95_of_offset_spheres_matches_brute_force_in_mm(offset_voxels, axis):
    centre = [16, 16, 16]
    moved = list(centre)
    moved[axis] += offset_voxels
    a, b = sphere(centre=centre), sphere(centre=moved)
    for spacing in (ANISOTROPIC_MM, (1.0, 1.0, 1.0)):
        assert hd95_mm(a, b, spacing) == pytest.approx(reference_hd95_mm(a, b, spacing), rel=1e-5)


def test_hd95_scales_with_the_spacing_along_the_offset_axis():
    a, b = sphere(centre=(16, 16, 16)), sphere(centre=(16, 16, 19))
    in_voxels = hd95_mm(a, b, (1.0, 1.0, 1.0))
    in_mm = hd95_mm(a, b, ANISOTROPIC_MM)
    coarser_z = hd95_mm(a, b, (0.8, 1.0, 5.0))
    assert in_mm != pytest.approx(in_voxels, rel=1e-2)
    assert coarser_z > in_mm
    assert coarser_z == pytest.approx(reference_hd95_mm(a, b, (0.8, 1.0, 5.0)), rel=1e-5)
    # Distances are homogeneous in the spacing: doubling every voxel size doubles HD95.
    assert hd95_mm(a, b, [2 * s for s in ANISOTROPIC_MM]) == pytest.approx(2 * in_mm, rel=1e-5)


def test_hd95_of_identical_masks_is_zero_and_accepts_torch():
    a = sphere()
    assert hd95_mm(a, a, ANISOTROPIC_MM) == 0.0
    assert hd95_mm(torch.from_numpy(a), torch.from_numpy(a).to(torch.uint8), ANISOTROPIC_MM) == 0.0


def test_hd95_rejects_bad_input():
    a = sphere()
    with pytest.raises(InputError, match="spacing_mm"):
        hd95_mm(a, a, (1.0, 1.0))
    with pytest.raises(InputError, match="spacing_mm"):
        hd95_mm(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="spacing_mm"):
        hd95_mm(a, a, (1.0, float("nan"), 1.0))
    with pytest.raises(InputError, match="shape"):
        hd95_mm(a, a[:-1], ANISOTROPIC_MM)
    with pytest.raises(InputError, match="empty"):
        hd95_mm(a, np.zeros_like(a), ANISOTROPIC_MM)


def test_structure_hd95_on_the_bounding_box_equals_the_whole_volume():
    shape = (40, 36, 30)
    # One pair in the middle, one touching the volume's faces (the box is clipped there).
    pairs = [(sphere(shape, (20, 18, 15), 6), sphere(shape, (23, 16, 15), 5)),
             (sphere(shape, (2, 3, 28), 6), box(shape, (0, 0, 24), (5, 9, 6)))]
    for a, b in pairs:
        whole = hd95_mm(a, b, ANISOTROPIC_MM)
        assert whole == pytest.approx(reference_hd95_mm(a, b, ANISOTROPIC_MM), rel=1e-5)
        assert score_structure(a, b, ANISOTROPIC_MM).hd95_mm == pytest.approx(whole, rel=1e-6)


def test_max_distance_is_the_volume_diagonal():
    assert max_distance_mm((11, 21, 5), (0.5, 1.0, 2.0)) == pytest.approx(math.sqrt(5 ** 2 + 20 ** 2 + 8 ** 2))


# Dice ---------------------------------------------------------------------------------------------------------------

def test_dice_of_overlapping_boxes_and_its_symmetry():
    shape = (20, 20, 20)
    a = box(shape, (0, 0, 0), (10, 10, 10))  # 1000 voxels
    b = box(shape, (5, 0, 0), (10, 10, 4))  # 400 voxels, 5 * 10 * 4 = 200 shared
    assert dice_score(a, b) == pytest.approx(2 * 200 / 1400)
    assert dice_score(b, a) == dice_score(a, b)
    assert score_structure(a, b, ANISOTROPIC_MM).dice == pytest.approx(2 * 200 / 1400)
    assert dice_score(a, a) == 1.0


# empty-structure policy ---------------------------------------------------------------------------------------------

def test_empty_structure_policy():
    shape = (16, 18, 20)
    full_diagonal = max_distance_mm(shape, ANISOTROPIC_MM)
    present, empty = box(shape, (2, 3, 4), (3, 3, 3)), np.zeros(shape, bool)

    missed = score_structure(empty, present, ANISOTROPIC_MM)
    assert (missed.dice, missed.hd95_mm, missed.status) == (0.0, full_diagonal, STATUS_MISSED)
    false_positive = score_structure(present, empty, ANISOTROPIC_MM)
    expected = (0.0, full_diagonal, STATUS_FALSE_POSITIVE)
    assert (false_positive.dice, false_positive.hd95_mm, false_positive.status) == expected
    absent = score_structure(empty, empty, ANISOTROPIC_MM)
    assert math.isnan(absent.dice) and math.isnan(absent.hd95_mm) and absent.status == STATUS_ABSENT
    assert score_structure(present, present, ANISOTROPIC_MM).status == STATUS_OK


def test_case_row_counts_statuses_and_leaves_absent_classes_out_of_the_means():
    shape = (24, 24, 24)
    label = np.zeros(shape, np.int64)
    label[2:10, 2:10, 2:10] = 1  # gm: predicted exactly
    label[12:18, 12:18, 12:18] = 2  # wm: missed
    prediction = np.where(label == 2, 0, label)
    prediction[20:23, 0:3, 0:3] = 3  # csf: predicted, not in the label
    classes = {0: "background", 1: "gm", 2: "wm", 3: "csf", 4: "lesion"}  # lesion: absent from both

    row = segmentation_case_scores(prediction, label, classes, ANISOTROPIC_MM)
    diagonal = max_distance_mm(shape, ANISOTROPIC_MM)
    statuses = [row[f"status_{name}"] for name in ("gm", "wm", "csf", "lesion")]
    assert statuses == [STATUS_OK, STATUS_MISSED, STATUS_FALSE_POSITIVE, STATUS_ABSENT]
    assert (row["dice_gm"], row["hd95_mm_gm"]) == (1.0, 0.0)
    assert (row["dice_wm"], row["hd95_mm_wm"]) == (0.0, diagonal)
    assert math.isnan(row["dice_lesion"]) and math.isnan(row["hd95_mm_lesion"])
    assert row["dice_mean"] == pytest.approx(1 / 3)
    assert row["hd95_mm_mean"] == pytest.approx(2 * diagonal / 3)
    assert (row["missed"], row["false_positive"]) == (1, 1)
    assert "dice_background" not in row
    assert list(row)[:3] == ["dice_gm", "hd95_mm_gm", "status_gm"]


def test_case_row_with_nothing_scored_has_nan_means():
    label = np.zeros((8, 8, 8), np.int64)
    row = segmentation_case_scores(label, label, {0: "background", 1: "lesion"}, (1.0, 1.0, 1.0))
    assert row["status_lesion"] == STATUS_ABSENT
    assert math.isnan(row["dice_mean"]) and math.isnan(row["hd95_mm_mean"])
    assert (row["missed"], row["false_positive"]) == (0, 0)


def test_case_scores_accept_channel_first_torch_and_match_per_structure_scores():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(12, 14, 10))
    prediction = np.where(rng.random(label.shape) < 0.1, rng.integers(0, 4, size=label.shape), label)
    row = segmentation_case_scores(torch.from_numpy(prediction)[None], torch.from_numpy(label)[None].float(),
                                   TISSUE_CLASSES, ANISOTROPIC_MM)
    for value, name in list(TISSUE_CLASSES.items())[1:]:
        expected = score_structure(prediction == value, label == value, ANISOTROPIC_MM)
        assert row[f"dice_{name}"] == pytest.approx(expected.dice)
        assert row[f"hd95_mm_{name}"] == pytest.approx(expected.hd95_mm)


def test_case_scores_reject_bad_labels():
    label = np.zeros((8, 8, 8), np.int64)
    label[1, 1, 1], label[2, 2, 2] = 5, 7
    with pytest.raises(InputError, match=r"label: .*\[5, 7\]"):
        segmentation_case_scores(np.zeros_like(label), label, TISSUE_CLASSES, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="label: shape"):
        segmentation_case_scores(np.zeros((8, 8, 9), np.int64), np.zeros((8, 8, 8), np.int64), TISSUE_CLASSES,
                                 (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="prediction"):
        segmentation_case_scores(np.full((8, 8, 8), 9), np.zeros((8, 8, 8), np.int64), TISSUE_CLASSES,
                                 (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="label: expected integer"):
        segmentation_case_scores(np.zeros((8, 8, 8)), np.full((8, 8, 8), 0.5), TISSUE_CLASSES, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing_mm"):
        segmentation_case_scores(label, label, TISSUE_CLASSES, (1.0, -1.0, 1.0))


# PSNR ---------------------------------------------------------------------------------------------------------------

def test_psnr_with_a_constant_error():
    reference = np.linspace(-1.0, 3.0, 1000).reshape(10, 10, 10)  # data range 4
    error = 0.05
    estimate = reference + error
    assert psnr_db(estimate, reference) == pytest.approx(20 * math.log10(4.0 / error))
    assert psnr_db(estimate, reference, peak=2.0) == pytest.approx(20 * math.log10(2.0 / error))
    scores = denoising_case_scores(torch.from_numpy(estimate).float(), reference)
    assert scores["psnr_db"] == pytest.approx(20 * math.log10(4.0 / error), rel=1e-5)
    assert scores["psnr_peak1_db"] == pytest.approx(20 * math.log10(1.0 / error), rel=1e-5)
    assert scores["mse"] == pytest.approx(error ** 2, rel=1e-5)


def test_psnr_of_identical_images_is_infinite():
    reference = np.random.default_rng(0).normal(size=(6, 7, 8))
    assert psnr_db(reference, reference) == math.inf
    assert denoising_case_scores(reference, reference)["psnr_peak1_db"] == math.inf


def test_psnr_rejects_bad_input():
    reference = np.random.default_rng(0).normal(size=(6, 7, 8))
    with pytest.raises(InputError, match="shape"):
        psnr_db(reference[:-1], reference)
    with pytest.raises(InputError, match="peak"):
        psnr_db(reference, reference, peak=0.0)
    with pytest.raises(InputError, match="constant"):
        psnr_db(reference, np.ones_like(reference))
    with pytest.raises(InputError, match="NaN"):
        psnr_db(np.full_like(reference, np.nan), reference)


def test_denoising_report_scores_the_gain_over_the_noisy_input(tmp_path):
    from mri_ssl.engines.reports import DenoisingReport

    clean = torch.linspace(-1.0, 3.0, 1000).reshape(1, 10, 10, 10)  # data range 4
    noise = 0.2 * torch.from_numpy(np.random.default_rng(0).choice([-1.0, 1.0], size=(1, 10, 10, 10))).float()
    report = DenoisingReport(tmp_path)
    item = {"image": clean + noise, "clean": clean}
    perfect = report.score(item, noise)  # predicts the noise exactly: gain is everything
    nothing = report.score(item, torch.zeros_like(noise))  # predicts no noise: the noisy input, 0 dB gained
    half = report.score(item, noise / 2)  # removes half the noise: error halves, +20 log10(2) dB
    assert nothing["noisy_psnr_db"] == pytest.approx(20 * math.log10(4.0 / 0.2), rel=1e-5)
    assert nothing["psnr_gain_db"] == pytest.approx(0.0, abs=1e-6)
    assert half["psnr_gain_db"] == pytest.approx(20 * math.log10(2.0), rel=1e-4)
    assert perfect["psnr_gain_db"] > 100
