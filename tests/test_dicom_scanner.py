"""`mri-ssl manifest dicom`: series grouping, header labels, central slices, resampling, bad files skipped by name."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from dicom_writer import write_mr_file, write_series
from mri_ssl.cli import main
from mri_ssl.data.cardiac.dicom_series import central_images, load_image, read_series
from mri_ssl.errors import InputError
from mri_ssl.io.images import read_dicom


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    for index in range(10):
        patient = f"P{index:02d}"
        write_series(root, patient, "t2", description="T2 TSE black blood", scanning="SE", te_ms=80, tr_ms=1800)
        write_series(root, patient, "cine_by_phases", positions=5, phases=3, scanning="GR", te_ms=1.5, tr_ms=3.0)
        write_series(root, patient, "lge_by_header", positions=10, scanning=["GR", "IR"], ti_ms=300, tr_ms=700)
        write_series(root, patient, "t1_by_header", scanning="SE", te_ms=12, tr_ms=600)
        write_series(root, patient, "map", description="MOLLI T1 map", scanning="GR")
        write_series(root, patient, "unknown", scanning="GR", te_ms=2, tr_ms=5)
    # pydicom's own MR test files: a readable spin echo (TR 4000 ms, TE 240 ms: T2 by its headers) and the truncated
    # copy of it (same series, pixels cut short), a truncated RT plan (not MR) and a file that is not DICOM at all.
    for name in ("MR_small.dcm", "MR_truncated.dcm", "rtplan_truncated.dcm"):
        shutil.copy(get_testdata_file(name), root / name)
    (root / "notes.txt").write_text("not a dicom file")
    return root


def test_series_are_grouped_and_labelled_from_headers(dicom_dir):
    series, skipped = read_series(dicom_dir)
    by_description = {}
    for item in series:
        if item.patient == "P00":
            by_description[item.images[0].path.parent.name] = item
    labels = {name: item.label for name, item in by_description.items()}
    assert labels == {"t2": "T2", "cine_by_phases": "Cine", "lge_by_header": "LGE", "t1_by_header": "T1",
                      "map": "Other", "unknown": None}
    assert by_description["cine_by_phases"].phases == 3
    assert "temporal phases" in by_description["cine_by_phases"].label_source
    small = [item for item in series if item.patient == "4MR1"]
    assert len(small) == 1 and small[0].label == "T2" and len(small[0].images) == 2  # MR_small + MR_truncated
    problems = {p.path.split("/")[-1]: p.problem for p in skipped}
    assert problems["notes.txt"] == "not a DICOM file"
    assert "not an MR image" in problems["rtplan_truncated.dcm"]


def test_central_twenty_percent_of_positions_keep_every_phase(dicom_dir):
    series, _ = read_series(dicom_dir)
    lge = next(s for s in series if s.patient == "P01" and s.label == "LGE")
    kept = central_images(lge)
    assert sorted({image.position for image in kept}) == [32.0, 40.0]  # positions 4 and 5 of 0..9 (x 8 mm)
    cine = next(s for s in series if s.patient == "P01" and s.label == "Cine")
    kept = central_images(cine)
    assert len(kept) == 3 and {image.position for image in kept} == {16.0}  # 1 of 5 positions, all 3 phases


def test_pixels_are_rescaled_and_area_resampled(tmp_path):
    pixels = np.full((42, 42), 100, dtype=np.uint16)
    pixels[:21] = 300  # top half brighter
    path = write_mr_file(tmp_path / "one.dcm", "P", "1.2.3", pixels, slope=2.0, intercept=-10.0)
    image = load_image(path, size=84)
    assert image.shape == (84, 84)
    np.testing.assert_allclose(image[:42], 590.0)
    np.testing.assert_allclose(image[42:], 190.0)
    with pytest.raises(InputError, match="MR_truncated.dcm: cannot decode the pixel data"):
        load_image(get_testdata_file("MR_truncated.dcm"))


def test_scanner_and_data_check_decode_the_same_pixels():
    # One DICOM reader: at its own size (no resampling) the scanner's image is the checked pixel data.
    path = get_testdata_file("MR_small.dcm")
    np.testing.assert_allclose(load_image(path, size=64), read_dicom(path, spatial_dims=2).data)


def test_manifest_cli_writes_images_splits_and_lists_skipped_files(dicom_dir, tmp_path, capsys):
    out = tmp_path / "cardiac.json"
    assert main(["manifest", "dicom", str(dicom_dir), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "MR_truncated.dcm" in printed and "notes.txt" in printed and "rtplan_truncated.dcm" in printed
    manifest = json.loads(out.read_text())
    entries = [e for split in ("training", "validation", "test") for e in manifest[split]]
    subjects = {split: {e["subject"] for e in manifest[split]} for split in ("training", "validation", "test")}
    assert len(subjects["training"]) == 8 and len(subjects["validation"]) == 1 and len(subjects["test"]) == 2
    assert not subjects["training"] & subjects["test"]
    # 10 patients x (1 T2 + 3 cine phases + 2 LGE + 1 T1 + 1 map + 1 unknown) + MR_small = 91 images.
    assert len(entries) == 91
    assert manifest["unlabeled"] == 10
    assert {e["sequence"] for e in entries} == {"T1", "T2", "Cine", "LGE", "Other", "unlabeled"}
    small = next(e for e in entries if e["subject"] == "4MR1")
    assert small["class_index"] == 1 and small["source_file"].endswith("MR_small.dcm")
    image = nib.load(out.parent / small["image"])
    assert image.shape == (84, 84)
    assert any(s["file"].endswith("MR_truncated.dcm") and "pixel data" in s["problem"] for s in manifest["skipped"])


def test_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    shutil.copy(get_testdata_file("rtplan_truncated.dcm"), tmp_path / "empty")
    assert main(["manifest", "dicom", str(tmp_path / "empty"), "--out", str(tmp_path / "m.json"), "--quiet"]) == 2
    assert "no readable MR image series" in capsys.readouterr().err
    assert main(["manifest", "dicom", str(tmp_path / "missing"), "--out", str(tmp_path / "m.json")]) == 2
