"""Fundus demo data, photograph reading and datalist checks (bad input names the file)."""

import json

import numpy as np
import pytest
from PIL import Image

from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.data.photo.demo import FUNDUS_DEMO, write_fundus_demo
from mri_ssl.data.photo.fundus import check_fundus_datalist, fundus_entries, read_mask, read_rgb
from mri_ssl.errors import InputError
from mri_ssl.io.images import read_raster_image


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fundus_demo")
    return folder, write_fundus_demo(folder, images=10, validation_images=2, test_images=2, size=64, seed=1)


def test_demo_has_lesions_exactly_on_abnormal_images(demo):
    folder, datalist = demo
    content = json.loads(datalist.read_text())
    assert [len(content[s]) for s in ("training", "validation", "test")] == [6, 2, 2]
    for split in ("training", "validation", "test"):
        assert {e["abnormal"] for e in content[split]} == {0, 1}
        for entry in content[split]:
            image, mask = read_rgb(folder / entry["image"]), read_mask(folder / entry["mask"])
            assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
            assert bool(mask.any()) == bool(entry["abnormal"])
            if entry["abnormal"]:
                # Lesions lie inside the fundus: no lesion pixel on the black background.
                assert image.mean(axis=0)[mask[0] > 0].min() > 15


def test_demo_is_reproducible_and_reused(demo, tmp_path):
    folder, datalist = demo
    again = write_fundus_demo(tmp_path, images=10, validation_images=2, test_images=2, size=64, seed=1)
    first = json.loads(datalist.read_text())["training"][1]["image"]
    np.testing.assert_array_equal(read_rgb(folder / first), read_rgb(tmp_path / first))
    parameters = dict(images=10, validation_images=2, test_images=2, size=64, seed=1)
    assert resolve_datalist("", tmp_path, FUNDUS_DEMO, **parameters) == str(again)
    stamp = again.stat().st_mtime_ns
    assert resolve_datalist("", tmp_path, FUNDUS_DEMO, **parameters) == str(again)
    assert again.stat().st_mtime_ns == stamp


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(InputError, match="truncated.png: cannot read the whole image"):
        read_rgb(truncated)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="text.png: not an image file Pillow can read"):
        read_rgb(tmp_path / "text.png")
    with pytest.raises(InputError, match="nothing.png: file not found"):
        read_rgb(tmp_path / "nothing.png")


def test_photographs_are_read_by_the_data_check_reader(tmp_path):
    # One Pillow reader: the loader's pixels are the checked ones, and a damaged file is refused by name with the data
    # check's message.
    rgb = np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "photo.png"),
                                  read_raster_image(tmp_path / "photo.png").data.transpose(2, 0, 1))
    flipped = bytearray((tmp_path / "photo.png").read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="flipped.png: cannot read the whole image"):
        read_rgb(tmp_path / "flipped.png")
    with pytest.raises(InputError, match="flipped.png: cannot read the whole image"):
        read_mask(tmp_path / "flipped.png")


def test_datalist_naming_a_missing_image_fails_naming_it(demo, tmp_path):
    folder, datalist = demo
    content = json.loads(datalist.read_text())
    content["training"][0]["image"] = str(tmp_path / "gone.png")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**content, "training": [{**e, "image": str(folder / e["image"]),
                                                        "mask": str(folder / e["mask"])} if i else e
                                                       for i, e in enumerate(content["training"])]}))
    with pytest.raises(InputError, match="gone.png: file not found"):
        check_fundus_datalist(bad)


def test_label_and_mask_problems_are_named(demo, tmp_path):
    folder, datalist = demo
    entry = {**json.loads(datalist.read_text())["training"][1]}
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    for change, message in (({"abnormal": 2}, "expected 0 \\(normal\\) or 1"),
                            ({"mask": str(tmp_path / "small_mask.png")}, "small_mask.png: mask size"),
                            ({"abnormal": None}, "no coarse label")):
        bad_entry = {**entry, "image": str(folder / entry["image"]), **change}
        if change.get("abnormal", 0) is None:
            del bad_entry["abnormal"]
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"training": [bad_entry]}))
        with pytest.raises(InputError, match=message):
            check_fundus_datalist(bad, splits=("training",))


def test_mask_lists_are_joined_by_union(tmp_path):
    a, b = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    a[0, 0], b[3, 3] = 255, 1
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    union = read_mask([tmp_path / "a.png", tmp_path / "b.png"])
    assert union.sum() == 2 and union[0, 0, 0] == union[0, 3, 3] == 1
    (tmp_path / "d.json").write_text(json.dumps({"training": [{"image": "a.png", "mask": ["a.png", "b.png"],
                                                               "abnormal": 1, "subject": "s"}]}))
    expected = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert fundus_entries(tmp_path / "d.json", "training")[0]["mask"] == expected
