"""Dataset scanners and manifests: fake IXI / ARC / qMRI trees of tiny NIfTIs, read back by MONAI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

import mri_ssl.io.atomic
from mri_ssl.data import manifests
from mri_ssl.data.manifests import (SCANNERS, manifest_summary, scan_arc, scan_ixi, scan_qmri, validate_manifest,
                                    write_manifest)
from mri_ssl.errors import InputError

REPO = Path(__file__).resolve().parents[1]

SPLITS = ("training", "validation", "test")


def write_nifti(path, value=1.0):
    """A 4x4x4 NIfTI at ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), value, dtype=np.float32), np.eye(4)), str(path))
    return path


def all_entries(manifest):
    return [entry for split in SPLITS for entry in manifest.get(split, [])]


def split_of(manifest):
    """subject -> the set of splits it appears in."""
    where = {}
    for split in SPLITS:
        for entry in manifest.get(split, []):
            where.setdefault(entry["subject"], set()).add(split)
    return where


def by_image_name(manifest):
    return {Path(entry["image"]).name: entry for entry in all_entries(manifest)}


# ------------------------------------------------------------------------------------------------ IXI

GST = [f"IXI{i:03d}" for i in range(2, 8)]  # 6 in-domain subjects: 4/1/1 by the 226/31/65 proportions
HH, IOP = ["IXI012", "IXI013"], ["IXI020"]


@pytest.fixture
def ixi_tree(tmp_path):
    """IXI as unpacked from its per-sequence tar files, plus labels in each of the three places looked in."""
    root = tmp_path / "IXI"
    site_of = {**{s: "Guys" for s in GST}, **{s: "HH" for s in HH}, **{s: "IOP" for s in IOP}}
    for number, (subject, site) in enumerate(site_of.items()):
        for sequence in ("T1", "T2", "PD"):
            write_nifti(root / f"IXI-{sequence}" / f"{subject}-{site}-{1000 + number}-{sequence}.nii.gz")
    # labels: beside the image, in a user label folder (.nii), in DIR/labels; the image folder wins over labels/
    write_nifti(root / "IXI-T1" / "IXI002-Guys-1000-T1_seg.nii.gz", 1)
    write_nifti(root / "labels" / "IXI002-Guys-1000-T1_label.nii.gz", 2)
    write_nifti(tmp_path / "my_labels" / "IXI012-HH-1006-T1_label.nii", 3)
    write_nifti(root / "labels" / "IXI003-Guys-1001-T2_dseg.nii.gz", 3)
    write_nifti(root / "labels" / "IXI020-IOP-1008-PD_labels.nii.gz", 3)
    # unrelated files that must be ignored
    write_nifti(root / "IXI-DTI" / "IXI002-Guys-1000-DTI-00.nii.gz")
    write_nifti(root / "IXI-MRA" / "IXI002-Guys-1000-MRA.nii.gz")
    write_nifti(root / ".cache" / "IXI004-Guys-1002-T1.nii.gz")
    (root / "README.txt").write_text("IXI")
    return root


def test_ixi_parses_subject_site_and_sequence(ixi_tree, tmp_path):
    manifest = scan_ixi(ixi_tree, label_dir=tmp_path / "my_labels")
    entries = by_image_name(manifest)
    assert len(entries) == 3 * (len(GST) + len(HH) + len(IOP))  # DTI, MRA, hidden folder, README ignored
    entry = entries["IXI012-HH-1006-T2.nii.gz"]
    assert (entry["subject"], entry["site"], entry["sequence"]) == ("IXI012", "HH", "T2w")
    entry = entries["IXI002-Guys-1000-PD.nii.gz"]
    assert (entry["subject"], entry["site"], entry["sequence"]) == ("IXI002", "GST", "PDw")
    assert entries["IXI020-IOP-1008-T1.nii.gz"]["site"] == "IOP"
    assert all(os.path.isabs(entry["image"]) for entry in entries.values())
    assert manifest["kind"] == "ixi" and manifest["labels"]["2"] == "white_matter"


def test_ixi_labels_are_found_in_the_three_places_in_order(ixi_tree, tmp_path):
    manifest = scan_ixi(ixi_tree, label_dir=tmp_path / "my_labels")
    entries = by_image_name(manifest)
    labelled = {name: Path(entry["label"]) for name, entry in entries.items() if "label" in entry}
    assert labelled == {
        "IXI002-Guys-1000-T1.nii.gz": ixi_tree / "IXI-T1" / "IXI002-Guys-1000-T1_seg.nii.gz",  # image folder first
        "IXI012-HH-1006-T1.nii.gz": tmp_path / "my_labels" / "IXI012-HH-1006-T1_label.nii",
        "IXI003-Guys-1001-T2.nii.gz": ixi_tree / "labels" / "IXI003-Guys-1001-T2_dseg.nii.gz",
        "IXI020-IOP-1008-PD.nii.gz": ixi_tree / "labels" / "IXI020-IOP-1008-PD_labels.nii.gz",
    }
    assert manifest["unlabeled"] == len(entries) - 4
    # without label_dir, that label is not found
    assert scan_ixi(ixi_tree)["unlabeled"] == len(entries) - 3


def test_ixi_out_of_domain_sites_are_test_only(ixi_tree):
    manifest = scan_ixi(ixi_tree, seed=3)
    for split in ("training", "validation"):
        assert {entry["site"] for entry in manifest[split]} == {"GST"}
    where = split_of(manifest)
    assert all(where[subject] == {"test"} for subject in HH + IOP)
    counts = {split: len({e["subject"] for e in manifest[split] if e["site"] == "GST"}) for split in SPLITS}
    assert counts == {"training": 4, "validation": 1, "test": 1}


def test_ixi_no_subject_is_in_two_splits(ixi_tree):
    for seed in range(5):
        where = split_of(scan_ixi(ixi_tree, seed=seed))
        assert all(len(splits) == 1 for splits in where.values())
        assert set(where) == set(GST + HH + IOP)


def test_ixi_splits_are_seeded(ixi_tree):
    assert scan_ixi(ixi_tree, seed=1) == scan_ixi(ixi_tree, seed=1)
    training = {seed: {e["subject"] for e in scan_ixi(ixi_tree, seed=seed)["training"]} for seed in range(6)}
    assert len({frozenset(subjects) for subjects in training.values()}) > 1


def test_ixi_accepts_plain_nii_and_rejects_a_duplicate_copy(tmp_path):
    write_nifti(tmp_path / "a" / "IXI100-Guys-0001-T1.nii")
    assert by_image_name(scan_ixi(tmp_path))["IXI100-Guys-0001-T1.nii"]["sequence"] == "T1w"
    write_nifti(tmp_path / "b" / "IXI100-Guys-0001-T1.nii.gz")
    with pytest.raises(InputError, match="same IXI image"):
        scan_ixi(tmp_path)


def test_ixi_manifest_is_read_back_by_monai(ixi_tree, tmp_path):
    out = write_manifest("ixi", ixi_tree, tmp_path / "manifests" / "ixi.json", label_dir=tmp_path / "my_labels")
    written = json.loads(out.read_text())
    for split in SPLITS:
        loaded = load_decathlon_datalist(str(out), data_list_key=split)
        assert len(loaded) == len(written[split])
        for entry in loaded:
            assert Path(entry["image"]).is_file()
            assert "label" not in entry or Path(entry["label"]).is_file()
            assert set(entry) >= {"image", "subject", "site", "sequence"}


# ------------------------------------------------------------------------------------------------ ARC


@pytest.fixture
def arc_tree(tmp_path):
    """BIDS ARC with lesion masks under derivatives/ and in an anat folder, and derived images to ignore."""
    root = tmp_path / "ARC"
    sessions = {"M2001": ["1253"], "M2002": ["100"], "M2003": ["1", "2"], "M2004": ["7"], "M2005": ["9"],
                "M200": ["5"]}
    for subject, session_ids in sessions.items():
        for session in session_ids:
            for sequence in ("T1w", "T2w", "FLAIR"):
                write_nifti(root / f"sub-{subject}" / f"ses-{session}" / "anat"
                            / f"sub-{subject}_ses-{session}_{sequence}.nii.gz")
    masks = root / "derivatives" / "lesion_masks"
    # M2001: a T2w mask and a session mask -> T2w gets its own, T1w and FLAIR the session mask
    write_nifti(masks / "sub-M2001" / "ses-1253" / "anat" / "sub-M2001_ses-1253_T2w_desc-lesion_mask.nii.gz")
    write_nifti(masks / "sub-M2001" / "ses-1253" / "anat" / "sub-M2001_ses-1253_label-lesion_roi.nii.gz")
    # M2002: only a FLAIR mask -> T1w and T2w stay unlabeled (a mask of another sequence is never used)
    write_nifti(masks / "sub-M2002_ses-100_FLAIR_Lesion.nii.gz")
    # M2003 session 1: a session mask in the anat folder itself; session 2: none
    write_nifti(root / "sub-M2003" / "ses-1" / "anat" / "sub-M2003_ses-1_desc-lesion_mask.nii.gz")
    # derived images under derivatives/ must not become entries
    write_nifti(root / "derivatives" / "fmriprep" / "sub-M2001" / "ses-1253" / "anat"
                / "sub-M2001_ses-1253_T1w.nii.gz")
    (root / "sub-M2004" / "ses-7" / "anat" / "sub-M2004_ses-7_T1w.json").write_text("{}")  # sidecar, not an image
    (root / "dataset_description.json").write_text("{}")
    return root


def test_arc_entries_and_mask_choice(arc_tree):
    manifest = scan_arc(arc_tree)
    entries = by_image_name(manifest)
    assert len(entries) == 3 * 7  # 7 sessions x 3 sequences; nothing from derivatives/
    assert all("derivatives" not in entry["image"] for entry in entries.values())
    masks = arc_tree / "derivatives" / "lesion_masks" / "sub-M2001" / "ses-1253" / "anat"
    assert entries["sub-M2001_ses-1253_T2w.nii.gz"]["label"] == str(masks / "sub-M2001_ses-1253_T2w_desc-lesion_mask"
                                                                            ".nii.gz")
    session_mask = str(masks / "sub-M2001_ses-1253_label-lesion_roi.nii.gz")
    assert entries["sub-M2001_ses-1253_T1w.nii.gz"]["label"] == session_mask
    assert entries["sub-M2001_ses-1253_FLAIR.nii.gz"]["label"] == session_mask
    assert entries["sub-M2002_ses-100_FLAIR.nii.gz"]["label"].endswith("sub-M2002_ses-100_FLAIR_Lesion.nii.gz")
    assert "label" not in entries["sub-M2002_ses-100_T1w.nii.gz"]
    assert entries["sub-M2003_ses-1_T2w.nii.gz"]["label"].endswith("ses-1/anat/sub-M2003_ses-1_desc-lesion_mask.nii.gz")
    assert "label" not in entries["sub-M2003_ses-2_T2w.nii.gz"]
    assert "label" not in entries["sub-M200_ses-5_T1w.nii.gz"]  # sub-M200 is not sub-M2001
    assert manifest["unlabeled"] == 21 - 3 - 1 - 3
    entry = entries["sub-M2003_ses-2_FLAIR.nii.gz"]
    assert (entry["subject"], entry["site"], entry["sequence"]) == ("sub-M2003", "ARC", "FLAIR")
    assert manifest["labels"] == {"0": "background", "1": "lesion"}


def test_arc_split_is_subject_level_and_seeded(arc_tree):
    manifest = scan_arc(arc_tree, seed=2)
    where = split_of(manifest)
    assert all(len(splits) == 1 for splits in where.values())  # both M2003 sessions in one split
    counts = {split: len({e["subject"] for e in manifest[split]}) for split in SPLITS}
    assert counts == {"training": 4, "validation": 1, "test": 1}  # 6 subjects at 70/10/20
    assert scan_arc(arc_tree, seed=2) == manifest


def test_arc_manifest_is_read_back_by_monai(arc_tree, tmp_path):
    out = write_manifest("arc", arc_tree, tmp_path / "arc.json")
    loaded = load_decathlon_datalist(str(out), data_list_key="training")
    assert loaded and all(Path(entry["image"]).is_file() for entry in loaded)


# ------------------------------------------------------------------------------------------------ qMRI


def write_map_folder(folder, names=("pd", "r1", "r2s", "mt")):
    for name in names:
        write_nifti(folder / f"{folder.name}_{name.upper()}.nii.gz", 0.5)


def test_qmri_lists_each_subject_folder_with_its_maps(tmp_path):
    for subject in ("sub-a", "sub-b", "sub-c"):
        write_map_folder(tmp_path / subject)
    write_map_folder(tmp_path / "sub-d", names=("pd", "r1", "r2s", "mt", "r2"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no maps here")
    manifest = scan_qmri(tmp_path, seed=0)
    entries = {entry["subject"]: entry for entry in all_entries(manifest)}
    assert set(entries) == {"sub-a", "sub-b", "sub-c", "sub-d"}
    assert set(entries["sub-d"]) == {"subject", "site", "pd", "r1", "r2s", "mt", "r2"}
    assert entries["sub-a"]["r2s"] == str(tmp_path / "sub-a" / "sub-a_R2S.nii.gz")
    assert entries["sub-a"]["site"] == "qmri"
    assert (len(manifest["training"]), len(manifest["validation"])) == (3, 1)
    out = write_manifest("qmri", tmp_path, tmp_path / "qmri.json")
    loaded = load_decathlon_datalist(str(out), data_list_key="validation")
    assert Path(loaded[0]["mt"]).is_file()


def test_qmri_folder_missing_a_map_is_named(tmp_path):
    write_map_folder(tmp_path / "sub-a")
    write_map_folder(tmp_path / "sub-b", names=("pd", "r1", "r2s"))
    with pytest.raises(InputError) as error:
        scan_qmri(tmp_path)
    assert error.value.source == str(tmp_path / "sub-b") and "mt" in error.value.problem


# ------------------------------------------------------------------------------------------------ demo


def test_demo_manifest_writes_the_phantom_and_reads_back(tmp_path):
    out = write_manifest("demo", tmp_path / "demo", tmp_path / "manifests" / "demo.json", subjects=3,
                         resolution_mm=6.0, test_subjects=1, validation_subjects=1, progress=False)
    written = json.loads(out.read_text())
    assert written["kind"] == "demo"
    assert {split: len({e["subject"] for e in written[split]}) for split in SPLITS} == {
        "training": 1, "validation": 1, "test": 1}
    for split in SPLITS:
        for entry in load_decathlon_datalist(str(out), data_list_key=split):
            assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
            assert os.path.isabs(entry["image"])


# ------------------------------------------------------------------------------------------------ write_manifest


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    for kind in ("ixi", "arc", "qmri"):
        with pytest.raises(InputError) as error:
            write_manifest(kind, missing, tmp_path / "out.json")
        assert error.value.source == str(missing) and "not found" in error.value.problem
    with pytest.raises(InputError, match="unknown dataset kind"):
        write_manifest("mnist", tmp_path, tmp_path / "out.json")


@pytest.mark.parametrize("kind, pattern", [("ixi", "IXI###-{Guys,HH,IOP}-####-{T1,T2,PD}.nii.gz"),
                                           ("arc", "sub-*/ses-*/anat/*_{T1w,T2w,FLAIR}.nii.gz"),
                                           ("qmri", "{pd,r1,r2s,mt}.nii.gz")])
def test_empty_folder_names_the_expected_pattern(tmp_path, kind, pattern):
    empty = tmp_path / "empty"
    write_nifti(empty / "sub-x" / "unrelated.nii.gz")
    with pytest.raises(InputError) as error:
        write_manifest(kind, empty, tmp_path / "out.json")
    assert error.value.source == str(empty) and pattern in error.value.problem
    assert not (tmp_path / "out.json").exists()


def test_subject_in_two_splits_is_refused(tmp_path, monkeypatch):
    def overlapping(directory, seed=0):
        entry = {"image": str(tmp_path / "x.nii.gz"), "subject": "sub-1", "site": "A", "sequence": "T1w"}
        return {"kind": "ixi", "training": [entry], "test": [dict(entry)]}

    monkeypatch.setitem(SCANNERS, "ixi", overlapping)
    with pytest.raises(InputError, match="sub-1.*'training'.*'test'"):
        write_manifest("ixi", tmp_path, tmp_path / "out.json")


def test_schema_catches_broken_manifests():
    entry = {"image": "a.nii.gz", "subject": "IXI002", "site": "GST", "sequence": "T1w"}
    validate_manifest({"kind": "ixi", "training": [entry], "labels": {"0": "background"}})
    validate_manifest({"kind": "qmri", "training": [{"subject": "s", "pd": "pd.nii.gz"}]})
    broken = [
        {"validation": [entry]},                                                     # no training
        {"kind": "ixi", "training": [{key: v for key, v in entry.items() if key != "sequence"}]},
        {"kind": "arc", "training": [{**entry, "label": 3}]},                        # label not a path
        {"kind": "qmri", "training": [{"pd": "pd.nii.gz"}]},                         # no subject
        {"training": [entry], "labels": {"one": "lesion"}},                         # label value not a number
        {"training": [entry], "seed": "zero"},
    ]
    for manifest in broken:
        with pytest.raises(InputError, match="not a valid manifest"):
            validate_manifest(manifest, source="broken.json")


def test_missing_schema_is_an_error(tmp_path):
    with pytest.raises(InputError, match="absent.json: cannot read the manifest schema"):
        validate_manifest({"training": []}, schema_path=tmp_path / "absent.json")
    assert manifests.SCHEMA_PATH.is_file() and manifests.SCHEMA_PATH.parent == Path(manifests.__file__).parent


@pytest.mark.slow
def test_a_non_editable_install_validates_manifests(tmp_path):
    """``pip install .`` (not editable) ships the schema: an installed copy rejects a broken manifest."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "mri_ssl", source / "mri_ssl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, cwd=tmp_path, timeout=300)
    check = ("import mri_ssl, sys\n"
             "from mri_ssl.data.manifests import validate_manifest\n"
             "from mri_ssl.errors import InputError\n"
             "assert mri_ssl.__file__.startswith(sys.argv[1]), mri_ssl.__file__\n"
             "try:\n"
             "    validate_manifest({'validation': []}, source='broken.json')\n"
             "except InputError as error:\n"
             "    print(error)\n")
    environment = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", check, str(site)], cwd=tmp_path, env=environment,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "broken.json: not a valid manifest" in run.stdout


def test_manifest_write_is_atomic(ixi_tree, tmp_path, monkeypatch):
    out = tmp_path / "out" / "ixi.json"
    write_manifest("ixi", ixi_tree, out, seed=0)
    before = out.read_text()

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(mri_ssl.io.atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_manifest("ixi", ixi_tree, out, seed=1)
    assert out.read_text() == before  # the old manifest is intact
    assert sorted(path.name for path in out.parent.iterdir()) == ["ixi.json"]  # and no partial file is left


def test_paths_are_relative_only_under_the_manifest_folder(ixi_tree, tmp_path):
    inside = write_manifest("ixi", ixi_tree, ixi_tree / "ixi.json")
    outside = write_manifest("ixi", ixi_tree, tmp_path / "elsewhere" / "ixi.json")
    inside_entries = all_entries(json.loads(inside.read_text()))
    outside_entries = all_entries(json.loads(outside.read_text()))
    assert all(not os.path.isabs(e["image"]) and not e["image"].startswith("..") for e in inside_entries)
    assert any(e["image"] == os.path.join("IXI-T1", "IXI002-Guys-1000-T1.nii.gz") for e in inside_entries)
    assert all(os.path.isabs(e["image"]) and os.path.isabs(e.get("label", "/")) for e in outside_entries)
    # a sibling folder is "outside" even though it shares a prefix with the data folder
    sibling = write_manifest("ixi", ixi_tree, str(ixi_tree) + "_manifests/ixi.json")
    assert all(os.path.isabs(e["image"]) for e in all_entries(json.loads(sibling.read_text())))
    for path in (inside, outside):
        images = sorted(e["image"] for e in load_decathlon_datalist(str(path), data_list_key="test"))
        assert images == sorted(os.path.join(ixi_tree, e["image"]) for e in json.loads(inside.read_text())["test"])


def test_manifest_summary_counts_split_site_sequence(ixi_tree):
    text = manifest_summary(scan_ixi(ixi_tree, seed=0))
    lines = text.splitlines()
    assert lines[0].split() == ["split", "site", "sequence", "images", "subjects", "labelled"]
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in lines[2:-1]}
    assert rows[("training", "GST", "T1w")][:2] == ["4", "4"]
    assert rows[("test", "HH", "PDw")][:2] == ["2", "2"]
    assert ("training", "HH", "T1w") not in rows
    assert lines[-1].split()[:3] == ["total", str(3 * 9), "9"]
    qmri_row = manifest_summary({"training": [{"subject": "s", "site": "qmri", "pd": "x"}]}).splitlines()[2]
    assert qmri_row.split() == ["training", "qmri", "-", "1", "1", "0"]
