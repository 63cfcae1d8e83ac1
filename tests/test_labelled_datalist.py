"""Checks a labelled datalist gets before training, inference inputs, and the downstream demo data."""

import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from mri_ssl.data.brain.demo import DOWNSTREAM_CONTRASTS, TISSUE_LABELS, write_downstream_demo
from mri_ssl.data.brain.demo import BRAIN_DOWNSTREAM_DEMO
from mri_ssl.data.datalist import check_labelled_datalist, inference_inputs, labelled_entries, resolve_datalist
from mri_ssl.errors import InputError

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path.name


def labelled_case(tmp_path, label=None, label_affine=AFFINE, shape=(6, 5, 4)):
    image = save(tmp_path / "img.nii.gz", np.random.default_rng(0).random(shape))
    other_image = save(tmp_path / "img2.nii.gz", np.random.default_rng(1).random(shape))
    label = np.zeros(shape) if label is None else label
    label_name = save(tmp_path / "lab.nii.gz", label, label_affine)
    datalist = tmp_path / "datalist.json"
    entry = {"image": image, "label": label_name, "subject": "s1"}
    # A second subject with its own image (one subject, or one image, in two splits would be a leak); the label map
    # may be shared (label maps are not compared: an empty mask or a shared atlas is legitimately identical).
    datalist.write_text(json.dumps({"training": [entry],
                                    "validation": [{**entry, "image": other_image, "subject": "s2"}]}))
    return datalist


def test_a_good_case_passes_and_counts(tmp_path):
    label = np.zeros((6, 5, 4))
    label[2:4, 1:3, 1:3] = 2
    assert check_labelled_datalist(labelled_case(tmp_path, label), label_values=[0, 1, 2, 3]) == 2


def test_label_with_other_shape_is_named(tmp_path):
    with pytest.raises(InputError, match=r"lab\.nii\.gz: label shape \(6, 5, 3\) differs"):
        check_labelled_datalist(labelled_case(tmp_path, np.zeros((6, 5, 3))))


def test_label_with_other_affine_is_named(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    with pytest.raises(InputError, match=r"lab\.nii\.gz: label affine differs"):
        check_labelled_datalist(labelled_case(tmp_path, label_affine=shifted))


def test_unknown_label_values_are_named(tmp_path):
    label = np.zeros((6, 5, 4))
    label[0, 0, 0] = 7
    with pytest.raises(InputError, match=r"lab\.nii\.gz: label values \[7\] are not among"):
        check_labelled_datalist(labelled_case(tmp_path, label), label_values=[0, 1, 2, 3])


def test_missing_file_and_missing_key_are_named(tmp_path):
    datalist = labelled_case(tmp_path)
    (tmp_path / "img.nii.gz").unlink()
    with pytest.raises(InputError, match=r"img\.nii\.gz: file not found"):
        check_labelled_datalist(datalist)
    datalist.write_text(json.dumps({"training": [{"label": "x.nii.gz"}]}))
    with pytest.raises(InputError, match="training entry 0 has no 'image'"):
        check_labelled_datalist(datalist)
    with pytest.raises(InputError, match="no cases"):
        check_labelled_datalist(datalist, splits=["test"])


def test_unlabelled_images_are_skipped_for_segmentation_but_used_for_denoising(tmp_path):
    datalist = labelled_case(tmp_path)
    content = json.loads(datalist.read_text())
    content["training"].append({"image": "img.nii.gz", "subject": "s3"})  # e.g. an IXI T2 without a tissue label
    datalist.write_text(json.dumps(content))
    assert [e["subject"] for e in labelled_entries(datalist, "training")] == ["s1"]
    assert len(labelled_entries(datalist, "training", ["image"])) == 2
    assert check_labelled_datalist(datalist, ["training"]) == 1
    assert check_labelled_datalist(datalist, ["training"], label_key=None) == 2
    content["training"] = [content["training"][1]]
    datalist.write_text(json.dumps(content))
    with pytest.raises(InputError, match="no cases with"):
        check_labelled_datalist(datalist, ["training"])


def test_images_only_for_denoising(tmp_path):
    datalist = labelled_case(tmp_path, np.zeros((6, 5, 3)))  # the bad label is not looked at
    assert check_labelled_datalist(datalist, label_key=None) == 2


def test_inference_inputs_from_a_folder_or_the_datalist(tmp_path):
    datalist = labelled_case(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    expected = [str(tmp_path / name) for name in ("img.nii.gz", "img2.nii.gz", "lab.nii.gz")]
    assert [item["image"] for item in inference_inputs(tmp_path)] == expected
    assert inference_inputs("", datalist, split="training") == [{"image": str(tmp_path / "img.nii.gz")}]
    with pytest.raises(InputError, match="input folder not found"):
        inference_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI"):
        inference_inputs(tmp_path / "empty")


def test_downstream_demo_splits_contrasts_and_labels(tmp_path):
    path = write_downstream_demo(tmp_path, subjects=4, test_subjects=1, validation_subjects=1, resolution_mm=6.0,
                                 progress=False)
    content = json.loads(path.read_text())
    assert content["labels"] == TISSUE_LABELS
    subjects = {split: {e["subject"] for e in content[split]} for split in ("training", "validation", "test")}
    assert subjects == {"training": {"sub-00", "sub-01"}, "validation": {"sub-02"}, "test": {"sub-03"}}
    assert {e["sequence"] for e in content["training"]} == {"T1w"}
    pairs = {(e["site"], e["sequence"]) for e in content["test"]}
    assert pairs == {("phantom", name) for name in DOWNSTREAM_CONTRASTS} | {("mni152", "T1w")}
    test = load_decathlon_datalist(str(path), data_list_key="test")
    assert check_labelled_datalist(path, ["training", "validation", "test"], label_values=[0, 1, 2, 3]) == 9
    label = np.asarray(nib.load(test[0]["label"]).dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    # The contrasts differ: T2w makes CSF brighter than white matter, T1w the reverse.
    images = {e["sequence"]: np.asarray(nib.load(e["image"]).dataobj) for e in test if e["site"] == "phantom"}
    csf, wm = label == 3, label == 2
    assert images["T2w"][csf].mean() > images["T2w"][wm].mean()
    assert images["T1w"][csf].mean() < images["T1w"][wm].mean()


def test_resolve_datalist_writes_the_downstream_demo_once(tmp_path):
    kwargs = dict(resolution_mm=6.0, subjects=3, validation_subjects=0, test_subjects=1, progress=False)
    path = resolve_datalist("", tmp_path, BRAIN_DOWNSTREAM_DEMO, **kwargs)
    stamp = (tmp_path / "datalist.json").stat().st_mtime_ns
    assert resolve_datalist("", tmp_path, BRAIN_DOWNSTREAM_DEMO, **kwargs) == path
    assert (tmp_path / "datalist.json").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="demo"):
        resolve_datalist("", tmp_path, "segmentation")
    with pytest.raises(InputError, match="test subject"):
        write_downstream_demo(tmp_path / "bad", subjects=2, test_subjects=1, validation_subjects=1, progress=False)
