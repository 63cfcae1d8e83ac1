"""Data integrity: a corpus of damaged files built in a temp dir, each giving its own check's error naming the file.

The corpus is what issue 9 lists: truncated .nii.gz and .nii, a header-only file, an empty file, random bytes, one
flipped byte in the gzip stream, NaN and Inf voxels, a 2-D image where 3-D is expected, a zero-size axis, a header
declaring huge dimensions, a NaN sform, zero pixdim, labels of another shape / affine / with unexpected values, qMRI
maps out of range, a subject in two splits; PNG damage; pydicom's own truncated and malformed DICOM test files.
"""

import gzip
import io
import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from mri_ssl.cli import main
from mri_ssl.data.integrity import check_case, check_data
from mri_ssl.errors import InputError
from mri_ssl.io.images import CHECKS, DataIntegrityError, read_dicom, read_image, read_nifti, read_raster_image

AFFINE = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
SHAPE = (12, 10, 8)


def volume(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).uniform(0.5, 1.0, shape).astype(np.float32)


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def raw_nifti_bytes(path):
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def write_nifti_bytes(path, raw):
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def with_header(path, **fields):
    """Rewrite header fields in place (the voxel bytes stay as they are), like a corrupt or hand-edited file."""
    raw = raw_nifti_bytes(path)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    for name, value in fields.items():
        header[name] = value
    return write_nifti_bytes(path, header.binaryblock + raw[348:])


def expect(check, path, call=None, **kwargs):
    """The read fails with ``check`` and the message names the file."""
    with pytest.raises(DataIntegrityError) as raised:
        (call or read_nifti)(path, **kwargs)
    assert raised.value.check == check, str(raised.value)
    assert str(path) in str(raised.value)
    assert f"[check: {check}]" in str(raised.value)
    assert isinstance(raised.value, InputError)  # callers catching InputError keep working
    return raised.value


# ----------------------------------------------------------------------------------------------------------------
# single NIfTI files


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_good_file_reads_exactly(tmp_path, suffix):
    data = volume()
    image = read_nifti(save(tmp_path / f"good{suffix}", data))
    np.testing.assert_array_equal(image.data, data)
    np.testing.assert_allclose(image.affine, AFFINE)
    assert image.spatial_shape == SHAPE and image.data.dtype == np.float32


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_files(tmp_path, suffix):
    path = save(tmp_path / f"cut{suffix}", volume())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    error = expect("complete", path)
    assert "truncated" in str(error)


def test_truncated_nii_is_caught_from_the_file_length_before_reading(tmp_path):
    path = save(tmp_path / "cut.nii", volume())
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    error = expect("complete", path)
    assert f"file has {full - 10} bytes but its header declares {full}" in str(error)


def test_header_only_empty_and_random_files(tmp_path):
    path = save(tmp_path / "header_only.nii", volume())
    path.write_bytes(path.read_bytes()[:352])
    expect("complete", path)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    assert "empty file" in str(expect("readable", empty))
    noise = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "noise.nii.gz").write_bytes(noise)
    expect("readable", tmp_path / "noise.nii.gz")
    (tmp_path / "noise.nii").write_bytes(noise)
    expect("readable", tmp_path / "noise.nii")
    expect("exists", tmp_path / "absent.nii.gz")


def test_one_flipped_byte_in_the_gzip_stream_is_caught(tmp_path):
    path = save(tmp_path / "flipped.nii.gz", volume())
    raw = bytearray(path.read_bytes())
    for position in (len(raw) // 2, len(raw) // 3, len(raw) - 12):  # inside the deflate data, away from the header
        damaged = bytearray(raw)
        damaged[position] ^= 0x01
        path.write_bytes(bytes(damaged))
        error = expect("complete", path)
        assert "gzip" in str(error)


@pytest.mark.parametrize("bad, expected", [(np.nan, "2 NaN and 0 Inf"), (np.inf, "0 NaN and 2 Inf")])
def test_nan_and_inf_voxels(tmp_path, bad, expected):
    data = volume()
    data[3, 4, 5] = data[6, 7, 1] = bad
    error = expect("finite", save(tmp_path / "bad.nii.gz", data))
    assert expected in str(error) and "(3, 4, 5)" in str(error)


def test_dimensions_are_a_parameter(tmp_path):
    flat = save(tmp_path / "flat.nii.gz", volume(shape=(12, 10)))
    expect("dimensions", flat)
    assert read_nifti(flat, spatial_dims=2).spatial_shape == (12, 10)
    four = save(tmp_path / "four.nii.gz", volume(shape=(12, 10, 8, 3)))
    expect("dimensions", four)
    one_volume = save(tmp_path / "one.nii.gz", volume(shape=(12, 10, 8, 1)))
    assert read_nifti(one_volume).spatial_shape == SHAPE


def test_zero_size_axis(tmp_path):
    path = with_header(save(tmp_path / "zero.nii.gz", volume()), dim=[3, 12, 0, 8, 1, 1, 1, 1])
    expect("zero_axis", path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_huge_declared_dimensions_fail_before_allocating(tmp_path, suffix):
    path = save(tmp_path / f"huge{suffix}", np.zeros((2, 2, 2), np.int16))
    raw = raw_nifti_bytes(path)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    header["dim"] = [3, 4000, 4000, 4000, 1, 1, 1, 1]
    write_nifti_bytes(path, header.binaryblock + raw[348:352])  # the header and nothing else: tens of bytes gzipped
    error = expect("memory", path)
    assert "(4000, 4000, 4000)" in str(error) and error.value > 300 * 1024 ** 3  # int16 + float32 copy
    if suffix == ".nii":  # without a cap the file length still stops it, before any voxel is allocated
        expect("complete", path, max_bytes=None)


def test_nan_sform_and_zero_pixdim(tmp_path):
    path = save(tmp_path / "sform.nii.gz", volume())
    with_header(path, srow_x=[np.nan, 0, 0, -10])
    assert "sform" in str(expect("affine", path))
    path = with_header(save(tmp_path / "qform.nii.gz", volume()), qform_code=1, quatern_b=np.nan)
    assert "qform" in str(expect("affine", path)) or "header" in str(expect("affine", path))
    path = with_header(save(tmp_path / "pixdim.nii.gz", volume()), pixdim=[1, 2.0, 0.0, 3.0, 1, 1, 1, 1])
    expect("spacing", path)
    path = with_header(save(tmp_path / "singular.nii", volume()), srow_z=[0, 0, 0, 5])  # a flat voxel
    assert "degenerate" in str(expect("affine", path))


# ----------------------------------------------------------------------------------------------------------------
# cases


def labelled(tmp_path, label, label_affine=AFFINE, name="case"):
    image = save(tmp_path / f"{name}_img.nii.gz", volume())
    label_path = save(tmp_path / f"{name}_lab.nii.gz", np.asarray(label, np.float32), label_affine)
    return {"image": str(image), "label": str(label_path)}


def errors_of(findings):
    return [(f.check, f.file.split("/")[-1]) for f in findings if f.status == "error"]


def test_label_shape_affine_and_values(tmp_path):
    label = np.zeros(SHAPE)
    label[2:5, 2:5, 2:5] = 2
    findings, images = check_case(labelled(tmp_path, label), label_key="label", label_values=[0, 1, 2, 3])
    assert findings == [] and set(images) == {"image", "label"}

    short = labelled(tmp_path, label[:, :, :-2], name="short")  # two voxels shorter, as MONAI would crop happily
    assert errors_of(check_case(short, label_key="label")[0]) == [("shape_match", "short_lab.nii.gz")]
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.5
    moved = labelled(tmp_path, label, shifted, name="moved")
    findings = check_case(moved, label_key="label")[0]
    assert errors_of(findings) == [("affine_match", "moved_lab.nii.gz")] and findings[0].value == pytest.approx(1.5)
    within = AFFINE.copy()
    within[0, 3] += 1e-5  # float rounding of scanner exports is tolerated
    assert errors_of(check_case(labelled(tmp_path, label, within, name="within"), label_key="label")[0]) == []
    odd = label.copy()
    odd[0, 0, 0], odd[1, 1, 1] = 7, 0.5
    findings = check_case(labelled(tmp_path, odd, name="odd"), label_key="label", label_values=[0, 1, 2, 3])[0]
    assert errors_of(findings) == [("label_values", "odd_lab.nii.gz")] and findings[0].value == [0.5, 7]


def test_every_problem_of_a_case_is_reported_and_warnings_do_not_fail(tmp_path):
    files = {"image": str(save(tmp_path / "nan.nii.gz", np.full(SHAPE, np.nan, np.float32))),
             "t2": str(tmp_path / "absent.nii.gz"),
             "label": str(save(tmp_path / "lab.nii.gz", np.zeros(SHAPE, np.float32)))}
    findings, _ = check_case(files, label_key="label")
    assert [(f.check, f.status) for f in findings] == [("finite", "error"), ("exists", "error"),
                                                       ("empty_label", "warning")]
    constant = {"image": str(save(tmp_path / "constant.nii.gz", np.ones(SHAPE, np.float32)))}
    assert [(f.check, f.status) for f in check_case(constant)[0]] == [("constant", "warning")]


def qmri_maps(folder, **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    maps = {"pd": rng.uniform(0.5, 1, SHAPE), "r1": rng.uniform(0.3, 2, SHAPE), "r2s": rng.uniform(5, 40, SHAPE),
            "mt": rng.uniform(0, 0.03, SHAPE), **overrides}
    return {name: str(save(folder / f"{name}.nii.gz", np.asarray(value, np.float32))) for name, value in maps.items()}


@pytest.mark.parametrize("name, value, words", [
    ("r1", 12.0, "R1 must be in [0, 10] 1/s"),
    ("r1", -0.1, "R1"),
    ("pd", -1.0, "proton density"),
    ("mt", 1.0, "[0, 1)"),   # MT = 1 is out: a fraction below one
    ("mt", 45.0, "percent"),
    ("r2s", 5000.0, "R2*"),
])
def test_qmri_maps_out_of_physical_range(tmp_path, name, value, words):
    values = np.random.default_rng(0).uniform(0.1, 0.5, SHAPE)
    values[1, 1, 1] = value
    findings = check_case(qmri_maps(tmp_path, **{name: values}))[0]
    assert errors_of(findings) == [("physical_range", f"{name}.nii.gz")]
    assert words in findings[0].message


def test_qmri_maps_in_range_pass_including_masked_zero_background(tmp_path):
    r1 = np.random.default_rng(0).uniform(0.3, 2, SHAPE)
    r1[:2] = 0.0
    assert check_case(qmri_maps(tmp_path, r1=r1))[0] == []


# ----------------------------------------------------------------------------------------------------------------
# PNG and DICOM: the same checks with dimensionality 2


def save_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def test_png_good_truncated_flipped_and_wrong_dimensions(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = save_png(tmp_path / "fundus.png", rgb)
    image = read_raster_image(path)
    assert image.spatial_shape == (40, 50) and image.data.shape == (40, 50, 3)
    np.testing.assert_array_equal(image.data, rgb)
    assert read_image(path, spatial_dims=2).spatial_shape == (40, 50)
    expect("dimensions", path, read_image, spatial_dims=3)

    raw = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(raw[: len(raw) // 2])
    expect("complete", cut, read_raster_image)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01  # inside IDAT: the chunk CRC no longer matches
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    expect("complete", tmp_path / "flipped.png", read_raster_image)
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes())
    expect("readable", tmp_path / "noise.png", read_raster_image)
    mask = save_png(tmp_path / "mask.png", np.zeros((40, 49), np.uint8))
    findings = check_case({"image": str(path), "label": str(mask)}, label_key="label", spatial_dims=2)[0]
    assert errors_of(findings) == [("shape_match", "mask.png")]


def dicom_test_file(name):
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_testdata_file(name)


def test_dicom_good_truncated_and_malformed_files_from_pydicom():
    image = read_dicom(dicom_test_file("MR_small.dcm"), spatial_dims=2)
    assert image.spatial_shape == (64, 64)
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3], axis=0), [0.3125, 0.3125, 0.8], rtol=1e-6)
    expect("dimensions", dicom_test_file("MR_small.dcm"), read_dicom, spatial_dims=3)
    assert "truncated" in str(expect("complete", dicom_test_file("MR_truncated.dcm"), read_dicom))
    expect("readable", dicom_test_file("rtplan_truncated.dcm"), read_dicom)  # no pixel data left: not an image
    expect("readable", dicom_test_file("badVR.dcm"), read_dicom)
    expect("readable", dicom_test_file("no_meta.dcm"), read_dicom)


# ----------------------------------------------------------------------------------------------------------------
# datalists and `mri-ssl check-data`


def manifest_with_problems(tmp_path):
    label = np.zeros(SHAPE)
    label[3:6, 3:6, 3:6] = 1
    entries = {}
    for index in range(3):
        case = labelled(tmp_path, label, name=f"s{index}")
        save(case["image"], volume(seed=index))  # each subject its own scan (same bytes would be a duplicate_file)
        entries[index] = {"image": case["image"].split("/")[-1], "label": case["label"].split("/")[-1],
                          "subject": f"s{index}"}
    cut = tmp_path / "s1_img.nii.gz"
    cut.write_bytes(cut.read_bytes()[:200])
    manifest = {"labels": {"0": "background", "1": "lesion"},
                "training": [entries[0], entries[1]],
                "validation": [entries[2]],
                "test": [{**entries[0], "subject": "s2"}]}  # s2 is in validation and test; s0's files in test
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_check_data_reports_every_case_and_the_split_leak(tmp_path):
    report = check_data(manifest_with_problems(tmp_path))
    assert [case.status for case in report.cases] == ["ok", "error", "ok", "ok"]
    assert [f.check for f in report.cases[1].findings] == ["complete"]
    assert [f.check for f in report.dataset_findings] == ["split_leak", "duplicate_file"]
    assert "subject s2" in report.dataset_findings[0].message
    assert "s0_img.nii.gz: listed under two splits" in report.dataset_findings[1].message
    with pytest.raises(DataIntegrityError, match=r"s2.*'validation' and the 'test' split.*2 more problem"):
        report.raise_on_error()
    assert set(f.check for f in report.findings) <= set(CHECKS)


def test_check_data_command_prints_a_table_writes_json_and_exits_non_zero(tmp_path, capsys):
    manifest = manifest_with_problems(tmp_path)
    out = tmp_path / "report.json"
    assert main(["check-data", str(manifest), "--report", str(out), "--quiet"]) == 1
    table = capsys.readouterr().out
    assert "split_leak" in table and "s1_img.nii.gz" in table
    assert "4 cases: 3 ok, 0 with warnings, 1 with errors" in table
    report = json.loads(out.read_text())
    assert report["summary"] == {"cases": 4, "ok": 3, "warning": 0, "error": 1, "dataset_errors": 2}
    assert report["cases"][1]["findings"][0]["check"] == "complete"

    content = json.loads(manifest.read_text())
    content["training"] = content["training"][:1]
    content["test"] = []
    manifest.write_text(json.dumps(content))
    assert main(["check-data", str(manifest), "--report", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["summary"]["error"] == 0
    assert main(["check-data", str(tmp_path / "absent.json"), "--quiet"]) == 2
