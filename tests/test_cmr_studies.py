"""Demo CMR studies: pathology ranges per label, reports that state the parameters, the manifest on disk."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from mri_ssl.data.cardiac.cmr_studies import (
    DISEASE_LABELS,
    anatomy_for_label,
    function_grade,
    load_cmr_manifest,
    scar_territory,
    write_cmr_studies,
    write_impression,
)
from mri_ssl.errors import InputError
from mri_ssl.physics.cardiac import HeartAnatomy


def test_labels_give_their_pathology():
    rng = np.random.default_rng(0)
    for _ in range(10):
        normal, dilated = anatomy_for_label("normal", rng), anatomy_for_label("dilated", rng)
        hcm, scar = anatomy_for_label("hypertrophic", rng), anatomy_for_label("scar", rng)
        assert not normal.has_scar and normal.lv_radius_mm < 30 and normal.ejection_fraction >= 0.55
        assert dilated.lv_radius_mm >= 31 and dilated.ejection_fraction < 0.45
        assert hcm.wall_thickness_mm >= 13
        assert scar.has_scar and not hcm.has_scar


def test_impression_states_the_parameters():
    anatomy = HeartAnatomy(lv_radius_mm=34.0, wall_thickness_mm=6.0, ejection_fraction=0.39, scar_center_deg=200.0,
                           scar_extent_deg=80.0, scar_transmurality=0.9, rv_scale=1.4)
    text = write_impression(anatomy, np.random.default_rng(0))
    assert "EF 39%" in text or "ejection fraction 39%" in text
    assert "moderately reduced" in text and re.search(r"dilated|enlarged", text, re.I)
    assert "inferoseptal" in text and "transmural" in text and "patchy" in text
    assert re.search(r"right ventricle is dilated|RV dilatation|Enlarged right ventricle", text)
    normal = write_impression(HeartAnatomy(), np.random.default_rng(0))
    assert "60%" in normal and "normal" in normal and "inferoseptal" not in normal


def test_wording_varies_but_facts_do_not():
    anatomy = HeartAnatomy(wall_thickness_mm=16.0, ejection_fraction=0.7)
    texts = {write_impression(anatomy, np.random.default_rng(seed)) for seed in range(30)}
    assert len(texts) >= 5
    assert all("70%" in t and "16 mm" in t for t in texts)


@pytest.mark.parametrize("ef,grade", [(0.6, "normal"), (0.5, "mildly reduced"), (0.39, "moderately reduced"),
                                      (0.2, "severely reduced"), (0.55, "normal"), (0.30, "moderately reduced")])
def test_function_grade_bands(ef, grade):
    assert function_grade(ef) == grade


@pytest.mark.parametrize("angle,name", [
    (90, "anterior"), (180, "inferoseptal"), (270, "inferior"), (10, "anterolateral"), (359, "inferolateral"),
    (-30, "inferolateral"), (150, "anteroseptal")])
def test_scar_territory(angle, name):
    assert scar_territory(angle) == name


def test_written_studies_and_manifest(tmp_path):
    path = write_cmr_studies(tmp_path, studies=8, seed=1, cine_frames=4, lge_slices=2, matrix=24, progress=False)
    manifest = load_cmr_manifest(tmp_path)
    assert json.loads(path.read_text()) == {key: value for key, value in manifest.items() if key != "root"}
    assert manifest["root"] == str(tmp_path)  # series files are relative to the manifest's folder
    assert [s["label"] for s in manifest["studies"]] == list(DISEASE_LABELS) * 2
    ids = [s["study_id"] for s in manifest["studies"]]
    splits = [manifest[k] for k in ("training", "validation", "test")]
    assert sorted(sum(splits, [])) == sorted(ids) and all(splits)
    study = manifest["studies"][3]  # a scar study
    assert study["label"] == "scar" and study["parameters"]["scar_extent_deg"] > 0
    assert re.search(r"enhancement|scar", study["report"], re.I)
    shapes = {(s["type"], s["view"]): nib.load(tmp_path / s["file"]).shape for s in study["series"]}
    assert shapes == {("cine", "sax"): (24, 24, 4), ("cine", "lax"): (24, 24, 4), ("lge", "sax"): (24, 24, 2),
                      ("lge", "lax"): (24, 24, 1)}
    cine = np.asarray(nib.load(tmp_path / study["series"][0]["file"]).dataobj)
    assert np.all(np.isfinite(cine)) and cine.std(axis=-1).mean() > 0  # frames differ (the heart beats)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="label"):
        anatomy_for_label("amyloid", np.random.default_rng(0))
    with pytest.raises(InputError, match="studies"):
        write_cmr_studies(tmp_path, studies=2)
    with pytest.raises(InputError, match="manifest"):
        load_cmr_manifest(tmp_path / "nowhere")
    write_cmr_studies(tmp_path, studies=4, cine_frames=1, lge_slices=1, matrix=16, progress=False)
    (tmp_path / "study0000" / "cine_sax.nii.gz").unlink()
    with pytest.raises(InputError, match="missing"):
        load_cmr_manifest(tmp_path)


def test_same_seed_same_studies_and_reports_and_splits_share_no_seed(tmp_path):
    small = dict(seed=3, cine_frames=2, lge_slices=1, matrix=16, progress=False)
    first = json.loads(write_cmr_studies(tmp_path / "a", studies=12, **small).read_text())
    again = json.loads(write_cmr_studies(tmp_path / "b", studies=12, **small).read_text())
    assert first == again  # reports, labels, parameters, seeds and splits
    for study in first["studies"][:2]:
        for series in study["series"]:
            np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "a" / series["file"]).dataobj),
                                          np.asarray(nib.load(tmp_path / "b" / series["file"]).dataobj))
    seed_of = {s["study_id"]: tuple(s["seed"]) for s in first["studies"]}
    assert len(set(seed_of.values())) == len(seed_of)  # one generator per study
    seeds = {split: {seed_of[i] for i in first[split]} for split in ("training", "validation", "test")}
    assert not seeds["training"] & seeds["validation"] and not seeds["training"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    # more studies keep the first ones as they were; another seed gives other studies
    more = json.loads(write_cmr_studies(tmp_path / "c", studies=16, **small).read_text())
    assert [s["report"] for s in more["studies"][:12]] == [s["report"] for s in first["studies"]]
    other = json.loads(write_cmr_studies(tmp_path / "d", studies=12, **{**small, "seed": 4}).read_text())
    assert [s["report"] for s in other["studies"]] != [s["report"] for s in first["studies"]]


def test_hundreds_of_studies_split_300_100_100():
    from mri_ssl.data.splits import split_counts
    from mri_ssl.data.cardiac.cmr_studies import SPLIT_FRACTIONS

    assert split_counts(500, SPLIT_FRACTIONS) == {"training": 300, "validation": 100, "test": 100}
