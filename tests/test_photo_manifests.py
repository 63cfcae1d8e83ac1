"""`mri-ssl manifest odir|idrid|refuge|chestxray14` on tiny copies of the published layouts."""

import json

import numpy as np
import pytest
from PIL import Image

from mri_ssl.cli import main
from mri_ssl.data.photo.fundus import check_fundus_datalist, fundus_entries, read_mask
from mri_ssl.errors import InputError


def image(path, value=120, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, np.uint8), mode=None).save(path)
    return path


def manifest(tmp_path, kind, folder):
    out = tmp_path / f"{kind}.json"
    assert main(["manifest", kind, str(folder), "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def all_entries(content):
    return [e for split in ("training", "validation", "test") for e in content.get(split, [])]


def test_odir_labels_each_eye_from_its_keywords(tmp_path):
    folder = tmp_path / "ODIR-5K"
    rows = ["ID,Left-Fundus,Right-Fundus,Left-Diagnostic Keywords,Right-Diagnostic Keywords,N,D"]
    for patient in range(10):
        right = "normal fundus" if patient % 2 else "moderate non proliferative retinopathy"
        rows.append(f"{patient},{patient}_left.jpg,{patient}_right.jpg,normal fundus，lens dust,{right},0,1")
        image(folder / "Training Images" / f"{patient}_left.jpg")
        image(folder / "Training Images" / f"{patient}_right.jpg")
    (folder / "annotation.csv").write_text("\n".join(rows))
    out, content = manifest(tmp_path, "odir", folder)
    entries = all_entries(content)
    assert len(entries) == 20
    by_name = {e["image"].split("/")[-1]: e["abnormal"] for e in entries}
    assert by_name["3_left.jpg"] == 0 and by_name["3_right.jpg"] == 0 and by_name["4_right.jpg"] == 1
    # Both eyes of a patient are in one split.
    for split in ("training", "validation", "test"):
        others = {e["subject"] for s in ("training", "validation", "test") if s != split for e in content[s]}
        assert not {e["subject"] for e in content[split]} & others
    assert check_fundus_datalist(out, ("training", "validation", "test")) == 20


def test_odir_label_file_naming_a_missing_image_names_the_file(tmp_path, capsys):
    folder = tmp_path / "odir"
    image(folder / "1_left.jpg")
    (folder / "labels.csv").write_text("ID,Left-Fundus,Right-Fundus,N\n1,1_left.jpg,1_right.jpg,1\n")
    assert main(["manifest", "odir", str(folder), "--out", str(tmp_path / "o.json")]) != 0
    assert "labels.csv: names the image '1_right.jpg'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    from mri_ssl.data.manifests.photo import scan_odir

    with pytest.raises(InputError, match="labels.csv: names the image"):
        scan_odir(folder)


def test_idrid_grading_and_lesion_masks(tmp_path):
    folder = tmp_path / "IDRiD"
    grading = folder / "B. Disease Grading"
    for split, names in (("a. Training Set", range(1, 11)), ("b. Testing Set", range(11, 13))):
        for i in names:
            image(grading / "1. Original Images" / split / f"IDRiD_{i:03d}.jpg")
    (grading / "2. Groundtruths").mkdir(parents=True)
    header = "Image name,Retinopathy grade,Risk of macular edema \n"
    (grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        header + "".join(f"IDRiD_{i:03d},{i % 3},0\n" for i in range(1, 11)))
    (grading / "2. Groundtruths" / "b. IDRiD_Disease Grading_Testing Labels.csv").write_text(
        header + "IDRiD_011,0,0\nIDRiD_012,0,1\n")
    segmentation = folder / "A. Segmentation"
    image(segmentation / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg")
    truth = segmentation / "2. All Segmentation Groundtruths" / "a. Training Set"
    first, second = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    first[0, 0], second[7, 7] = 255, 255
    Image.fromarray(first).save(image(truth / "1. Microaneurysms" / "IDRiD_01_MA.tif", mode="L"))
    Image.fromarray(second).save(image(truth / "3. Hard Exudates" / "IDRiD_01_EX.tif", mode="L"))
    out, content = manifest(tmp_path, "idrid", folder)
    assert {e["subject"] for e in content["test"]} == {"idrid_IDRiD_011", "idrid_IDRiD_012"}
    assert {e["abnormal"] for e in content["test"]} == {0, 1}
    assert len(content["validation"]) >= 1 and len(all_entries(content)) == 13
    segmented = [e for e in fundus_entries(out, "training") + fundus_entries(out, "validation") if e.get("mask")]
    assert len(segmented) == 1 and len(segmented[0]["mask"]) == 2
    assert read_mask(segmented[0]["mask"]).sum() == 2


def test_refuge_disc_masks_have_a_white_background(tmp_path):
    folder = tmp_path / "REFUGE"
    for cls, prefix in (("Glaucoma", "g"), ("Non-Glaucoma", "n")):
        for i in range(5):
            image(folder / "Training400" / cls / f"{prefix}{i:04d}.jpg")
            mask = np.full((8, 8), 255, np.uint8)
            mask[2:5, 2:5] = 128
            mask[3, 3] = 0
            Image.fromarray(mask).save(image(folder / "Annotation-Training400" / "Disc_Cup_Masks" / cls /
                                             f"{prefix}{i:04d}.bmp", mode="L"))
    out, content = manifest(tmp_path, "refuge", folder)
    entries = all_entries(content)
    assert len(entries) == 10 and sum(e["abnormal"] for e in entries) == 5
    assert check_fundus_datalist(out, ("training", "validation", "test"), require_mask=True) == 10
    from mri_ssl.data.photo.fundus import LoadPhotographd

    loaded = LoadPhotographd("image", mask_keys="mask")(fundus_entries(out, "training")[0])
    assert int(loaded["mask"].sum()) == 9  # the 3 x 3 disc (rim and cup), not the background


def test_chestxray14_official_test_list_and_no_finding(tmp_path):
    folder = tmp_path / "CXR14"
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    for i in range(12):
        name = f"{i:08d}_000.png"
        image(folder / "images_001" / "images" / name, mode="L", value=60)
        rows.append(f"{name},{'No Finding' if i % 2 else 'Effusion|Atelectasis'},0,{i}")
    (folder / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows))
    (folder / "test_list.txt").write_text("00000010_000.png\n00000011_000.png\n")
    out, content = manifest(tmp_path, "chestxray14", folder)
    assert sorted(e["image"].split("/")[-1] for e in content["test"]) == ["00000010_000.png", "00000011_000.png"]
    assert {e["abnormal"] for e in content["test"]} == {0, 1} and len(content["validation"]) == 1
    assert check_fundus_datalist(out, ("training",)) == 9
