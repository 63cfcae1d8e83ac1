"""`mri-ssl manifest cmr`: DICOM study folders with one report each -> video-text manifest the bundle loads."""

from __future__ import annotations

import nibabel as nib
import pytest

from mri_ssl.data.cardiac.cmr_dicom import scan_cmr_dicom, series_view, write_cmr_dicom_manifest
from mri_ssl.data.cardiac.cmr_studies import load_cmr_manifest
from mri_ssl.errors import InputError
from dicom_writer import write_series


def _studies(root, count=3):
    for index in range(count):
        study = f"study{index}"
        write_series(root, study, "cine_sax", positions=3, phases=5, size=32, seed=index, description="SSFP SAX stack")
        write_series(root, study, "cine_4ch", positions=1, phases=6, size=32, seed=index, description="SSFP 4CH")
        write_series(root, study, "lge", positions=4, size=32, seed=index, description="PSIR", scanning=["GR", "IR"],
                     ti_ms=300.0)
        write_series(root, study, "t2", positions=1, size=32, seed=index, scanning="SE", te_ms=80.0, tr_ms=2000.0)
        (root / study / "report.txt").write_text(f"Normal LV size, EF {55 + index}%.\n")


@pytest.mark.parametrize("description,positions,view", [
    ("cine 4CH", 1, "lax"), ("LAX 2ch", 1, "lax"), ("sa_stack short axis", 9, "sax"), ("cine", 9, "sax"),
    ("cine", 1, "lax"), ("ch3 cine", 1, "lax")])
def test_series_view(description, positions, view):
    assert series_view(description, positions) == view


def test_scan_writes_loadable_manifest(tmp_path):
    _studies(tmp_path / "dicom")
    (tmp_path / "dicom" / "noreport").mkdir()
    path = write_cmr_dicom_manifest(tmp_path / "dicom", tmp_path / "out", size=16)
    manifest = load_cmr_manifest(path)
    assert [s["study_id"] for s in manifest["studies"]] == ["study0", "study1", "study2"]
    assert any("noreport" in s["file"] for s in manifest["skipped"])
    study = manifest["studies"][1]
    assert study["report"] == "Normal LV size, EF 56%."
    kinds = sorted((s["type"], s["view"], s["num_frames"]) for s in study["series"])
    assert kinds == [("cine", "lax", 6), ("cine", "sax", 5), ("lge", "sax", 4)]  # T2 dropped; cine = central slice
    for series in study["series"]:
        assert nib.load(tmp_path / "out" / series["file"]).shape == (16, 16, series["num_frames"])
    assert sorted(sum((manifest[k] for k in ("training", "validation", "test")), [])) == ["study0", "study1",
                                                                                          "study2"]


def test_no_usable_study(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="no usable study"):
        scan_cmr_dicom(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputError, match="not found"):
        scan_cmr_dicom(tmp_path / "missing", tmp_path / "out")


def test_cli_manifest_cmr(tmp_path, capsys):
    from mri_ssl.cli import main

    _studies(tmp_path / "dicom", count=2)
    assert main(["manifest", "cmr", str(tmp_path / "dicom"), "--out", str(tmp_path / "cmr")]) == 0
    assert "2 studies" in capsys.readouterr().out
    assert len(load_cmr_manifest(tmp_path / "cmr")["studies"]) == 2
