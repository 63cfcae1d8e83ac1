"""Smooth random deformations used to make demo subjects."""

import pytest
import torch

from mri_ssl.data.brain.deformation import smooth_displacement, warp
from mri_ssl.errors import InputError


def test_zero_displacement_is_identity_and_unit_shift_moves_by_one_voxel():
    volume = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(5, 6, 7)
    torch.testing.assert_close(warp(volume, torch.zeros(3, 5, 6, 7)), volume)
    for axis in range(3):
        shift = torch.zeros(3, 5, 6, 7)
        shift[axis] = 1.0
        moved = warp(volume, shift)
        index = [slice(None)] * 3
        index[axis] = slice(0, volume.shape[axis] - 1)
        source = [slice(None)] * 3
        source[axis] = slice(1, None)
        torch.testing.assert_close(moved[tuple(index)], volume[tuple(source)])


def test_nearest_warp_keeps_label_values():
    labels = torch.randint(0, 5, (12, 12, 12))
    field = smooth_displacement((12, 12, 12), 2.0, 4.0, torch.Generator().manual_seed(0))
    warped = warp(labels, field, mode="nearest")
    assert warped.dtype == labels.dtype and set(warped.unique().tolist()) <= set(range(5))
    assert not torch.equal(warped, labels)


def test_displacement_is_smooth_seeded_and_scaled_in_mm():
    a = smooth_displacement((40, 40, 40), 2.0, 3.0, torch.Generator().manual_seed(1))
    b = smooth_displacement((40, 40, 40), 2.0, 3.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 40, 40, 40)
    # Neighbouring voxels move almost together: no folding, brain-sized warps.
    assert (a[:, 1:] - a[:, :-1]).abs().max() < 0.2 * a.abs().max()
    # Twice the voxel size in mm -> half the displacement in voxels.
    c = smooth_displacement((40, 40, 40), 4.0, 3.0, torch.Generator().manual_seed(1))
    assert float(c.abs().max()) < float(a.abs().max())
    with pytest.raises(InputError, match="std_mm"):
        smooth_displacement((4, 4, 4), 1.0, -1.0)
