"""`mri-ssl demo-data` and `mri-ssl demo` (stage 1) on the embedded MNI152 phantom, at 2 mm to stay fast."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mri_ssl.cli import main
from mri_ssl.data.nifti import load_maps
from mri_ssl.physics import SEQUENCES, TYPICAL_PROTOCOLS, simulate
from mri_ssl.physics.phantom import TISSUE_CLASSES
from mri_ssl.transforms import SimulateSequenced


def test_demo_data_is_read_by_monai_like_real_data(tmp_path):
    out = tmp_path / "demo_data"
    assert main(["demo-data", "--out", str(out), "--subjects", "3", "--resolution-mm", "2", "--quiet"]) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {str(i): name for i, name in enumerate(TISSUE_CLASSES)}
    training = load_decathlon_datalist(out / "datalist.json", data_list_key="training", base_dir=out)
    validation = load_decathlon_datalist(out / "datalist.json", data_list_key="validation", base_dir=out)
    assert len(training) == 2 and len(validation) == 1
    keys = ("pd", "r1", "r2s", "mt", "label")
    pipeline = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                        SimulateSequenced(("pd", "r1", "r2s", "mt"), sequence="mprage")])
    item = pipeline(training[0])
    assert item["image"].shape == item["label"].shape
    assert set(np.unique(item["label"].numpy()).astype(int)) <= set(range(len(TISSUE_CLASSES)))
    # Subjects differ (seeded per-subject jitter) but share anatomy and affine.
    maps_a, affine_a = load_maps({k: training[0][k] for k in ("pd", "r1", "r2s", "mt")})
    maps_b, affine_b = load_maps({k: training[1][k] for k in ("pd", "r1", "r2s", "mt")})
    np.testing.assert_allclose(affine_a, affine_b)
    assert not torch.equal(maps_a["r1"], maps_b["r1"])
    labels_a = nib.load(training[0]["label"]).get_fdata()
    labels_b = nib.load(training[1]["label"]).get_fdata()
    assert 0.0 < (labels_a != labels_b).mean() < 0.2  # deformed anatomy: different, yet the same brain
    # Re-running with the same seed writes the same data.
    again = tmp_path / "again"
    assert main(["demo-data", "--out", str(again), "--subjects", "3", "--resolution-mm", "2", "--quiet"]) == 0
    first = nib.load(str(out / "sub-01" / "r1.nii.gz")).get_fdata()
    np.testing.assert_array_equal(first, nib.load(str(again / "sub-01" / "r1.nii.gz")).get_fdata())


def test_demo_data_rejects_nonsense(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "x"), "--subjects", "0"]) == 2
    assert "subjects" in capsys.readouterr().err
    assert main(["demo-data", "--out", str(tmp_path / "y"), "--resolution-mm", "-1"]) == 2
    assert "resolution_mm" in capsys.readouterr().err


def test_demo_stage_one_writes_images_montage_and_fidelity(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--resolution-mm", "2", "--random-protocols", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Pearson r" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fidelity_mprage_vs_real_t1"]["pearson_r"] >= 0.9
    assert len(summary["simulated"]) == len(SEQUENCES) * 3
    png = (out / "montage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # The typical-protocol image on disk is exactly what the library computes from the phantom on disk.
    maps, affine = load_maps({k: out / "phantom" / f"{k}.nii.gz" for k in ("pd", "r1", "r2", "r2s", "mt")})
    for sequence in SEQUENCES:
        image = nib.load(str(out / "simulated" / f"{sequence}_0.nii.gz"))
        np.testing.assert_allclose(image.affine, affine)
        expected = simulate(maps, sequence, TYPICAL_PROTOCOLS[sequence]).numpy()
        np.testing.assert_allclose(np.asarray(image.dataobj), expected, rtol=1e-5, atol=1e-7)
        sidecar = json.loads((out / "simulated" / f"{sequence}_0.json").read_text())
        assert sidecar["protocol"] == pytest.approx(TYPICAL_PROTOCOLS[sequence])
