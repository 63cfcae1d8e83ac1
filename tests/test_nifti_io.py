"""NIfTI reading and writing: errors name the file, writes are atomic, map sets are checked as one subject."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mri_ssl.data.brain.maps import find_map_files, load_maps
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output
from mri_ssl.io.nifti import load_nifti, save_nifti

AFFINE = np.array([[1.5, 0, 0, -10], [0, 1.5, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])


def write_maps(folder, shape=(6, 7, 5), **overrides):
    rng = np.random.default_rng(0)
    maps = {
        "pd": rng.uniform(0.5, 1.0, shape),
        "r1": rng.uniform(0.3, 2.0, shape),
        "r2s": rng.uniform(5, 30, shape),
        "mt": rng.uniform(0, 0.03, shape),
    }
    maps.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in maps.items():
        files[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), AFFINE), str(files[name]))
    return files


def test_save_then_load_keeps_data_and_affine(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    path = save_nifti(torch.from_numpy(data), AFFINE, tmp_path / "x.nii.gz")
    loaded, affine = load_nifti(path)
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_allclose(affine, AFFINE)
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "result.nii.gz"
    save_nifti(np.ones((2, 2, 2), np.float32), AFFINE, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"half a file")
            raise RuntimeError("crash during write")
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["result.nii.gz"]


def test_truncated_gzip_names_the_file(tmp_path):
    path = save_nifti(np.random.rand(20, 20, 20).astype(np.float32), AFFINE, tmp_path / "cut.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as error:
        load_nifti(path)
    assert "cut.nii.gz" in str(error.value)


def test_not_a_nifti_and_missing_file(tmp_path):
    bogus = tmp_path / "bogus.nii.gz"
    bogus.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(InputError, match="bogus.nii.gz"):
        load_nifti(bogus)
    with pytest.raises(InputError, match="file not found"):
        load_nifti(tmp_path / "absent.nii.gz")


def test_two_dimensional_image_is_rejected_and_singleton_volume_dropped(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(InputError, match="2 dimensions"):
        load_nifti(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii"))
    assert load_nifti(tmp_path / "one.nii")[0].shape == (4, 5, 6)


def test_find_map_files_by_name(tmp_path):
    for name in ("sub-01_PD", "sub-01_R1", "sub-01_R2s_OLS", "sub-01_MTsat", "notes"):
        save_nifti(np.ones((2, 2, 2), np.float32), AFFINE, tmp_path / f"{name}.nii")
    found = find_map_files(tmp_path)
    assert {k: v.name for k, v in found.items()} == {
        "pd": "sub-01_PD.nii", "r1": "sub-01_R1.nii", "r2s": "sub-01_R2s_OLS.nii", "mt": "sub-01_MTsat.nii"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no qMRI maps"):
        find_map_files(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        find_map_files(tmp_path / "absent")


def test_load_maps_checks_the_subject_as_a_whole(tmp_path):
    files = write_maps(tmp_path / "good")
    maps, affine = load_maps(files)
    assert set(maps) == {"pd", "r1", "r2s", "mt"} and maps["pd"].dtype == torch.float32
    np.testing.assert_allclose(affine, AFFINE)

    bad_shape = write_maps(tmp_path / "shape")
    nib.save(nib.Nifti1Image(np.ones((6, 7, 4), np.float32), AFFINE), str(bad_shape["r1"]))
    with pytest.raises(InputError, match=r"r1\.nii\.gz.*shape"):
        load_maps(bad_shape)

    bad_affine = write_maps(tmp_path / "affine")
    shifted = AFFINE.copy()
    shifted[0, 3] += 3.0
    nib.save(nib.Nifti1Image(np.ones((6, 7, 5), np.float32), shifted), str(bad_affine["mt"]))
    with pytest.raises(InputError, match=r"mt\.nii\.gz.*affine"):
        load_maps(bad_affine)

    nan_map = np.full((6, 7, 5), 1.0)
    nan_map[1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"r2s\.nii\.gz.*non-finite"):
        load_maps(write_maps(tmp_path / "nan", r2s=nan_map))
    with pytest.raises(InputError, match=r"r1\.nii\.gz.*R1"):
        load_maps(write_maps(tmp_path / "negative", r1=-np.ones((6, 7, 5))))
    with pytest.raises(InputError, match=r"mt\.nii\.gz.*percent"):
        load_maps(write_maps(tmp_path / "percent", mt=np.full((6, 7, 5), 1.8)))
    missing = write_maps(tmp_path / "missing")
    del missing["r1"]
    with pytest.raises(InputError, match="r1"):
        load_maps(missing)
