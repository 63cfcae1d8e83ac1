"""Fault injection on datalists: one image listed under two subjects or two splits is flagged by `check-data`.

The probe of issue 19 listed the same file under different subject ids in training and validation; ``split_leak``
(which compares subject ids) missed it. ``duplicate_file`` compares real paths and, for different paths, content.
"""

import json
import os

import nibabel as nib
import numpy as np

from mri_ssl.cli import main
from mri_ssl.data.integrity import check_data


def write_volume(path, seed):
    data = np.random.default_rng(seed).random((6, 6, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path.name


def manifest(tmp_path, training, validation, test=()):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"training": list(training), "validation": list(validation), "test": list(test)}))
    return path


def duplicates(report):
    return [finding for finding in report.dataset_findings if finding.check == "duplicate_file"]


def test_the_same_path_under_another_subject_in_another_split_is_an_error(tmp_path, capsys):
    a, b = write_volume(tmp_path / "a.nii.gz", 0), write_volume(tmp_path / "b.nii.gz", 1)
    path = manifest(tmp_path, [{"image": a, "subject": "s1"}, {"image": b, "subject": "s2"}],
                    [{"image": f"./sub/../{a}", "subject": "s9"}])  # another spelling of the same file
    (tmp_path / "sub").mkdir()
    report = check_data(path, label_key=None)
    [finding] = duplicates(report)
    assert finding.status == "error" and finding.file == str(tmp_path / "a.nii.gz")
    assert "under two splits" in finding.message and "subject s1 (training)" in finding.message
    assert "subject s9 (validation)" in finding.message
    assert [f.check for f in report.dataset_findings] == ["duplicate_file"]  # split_leak saw different subjects
    assert main(["check-data", str(path), "--report", "", "--label-key", "", "--quiet"]) == 1
    assert "duplicate_file" in capsys.readouterr().out


def test_a_copy_or_a_link_is_found_by_its_content(tmp_path):
    a = write_volume(tmp_path / "a.nii.gz", 0)
    (tmp_path / "copy.nii.gz").write_bytes((tmp_path / "a.nii.gz").read_bytes())
    os.symlink(tmp_path / "a.nii.gz", tmp_path / "link.nii.gz")
    write_volume(tmp_path / "other.nii.gz", 5)
    path = manifest(tmp_path, [{"image": a, "subject": "s1"}, {"image": "other.nii.gz", "subject": "s3"}],
                    [{"image": "copy.nii.gz", "subject": "s2"}], [{"image": "link.nii.gz", "subject": "s4"}])
    found = duplicates(check_data(path, label_key=None))
    by_path = [f for f in found if "listed under" in f.message]
    by_content = [f for f in found if "the same content" in f.message]
    assert len(by_path) == 1 and "subject s1 (training)" in by_path[0].message  # the symlink resolves to a.nii.gz
    assert "subject s4 (test)" in by_path[0].message
    assert len(by_content) == 1 and by_content[0].status == "error" and "copy.nii.gz" in by_content[0].file
    assert "subject s2 (validation)" in by_content[0].message
    assert "other.nii.gz" not in " ".join(f.message for f in found)


def test_two_subjects_in_one_split_are_a_warning_and_shared_labels_pass(tmp_path):
    a, b = write_volume(tmp_path / "a.nii.gz", 0), write_volume(tmp_path / "b.nii.gz", 1)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.uint8), np.eye(4)), str(mask))
    path = manifest(tmp_path, [{"image": a, "label": "mask.nii.gz", "subject": "s1"},
                               {"image": a, "label": "mask.nii.gz", "subject": "s2"}],
                    [{"image": b, "label": "mask.nii.gz", "subject": "s3"}])
    report = check_data(path, label_values=[0, 1])
    [finding] = duplicates(report)
    assert finding.status == "warning" and "under two subjects" in finding.message and "mask" not in finding.file
    assert not report.errors
