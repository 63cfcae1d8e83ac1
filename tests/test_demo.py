"""`mri-ssl demo-data` and `mri-ssl demo` on the embedded MNI152 phantom: stage 1 at 2 mm, the rest on a tiny grid."""

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mri_ssl.cli import main
from mri_ssl.data.brain.maps import load_maps
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
    assert main(["demo", "--out", str(out), "--resolution-mm", "2", "--random-protocols", "2", "--quiet",
                 "--simulation-only"]) == 0
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


@pytest.mark.slow
def test_full_demo_on_a_tiny_grid_writes_tables_figures_and_summary(tmp_path, capsys, monkeypatch):
    from test_experiment import TINY_DOWNSTREAM, write_grid

    denoising = {"name": "denoising", "bundle": "mri_denoising", "configs": ["train.json", "cpu_demo.json"],
                 "evaluate": ["evaluate.json"], "metrics": {"psnr_db": "higher"},
                 "in_domain": {"site": ["phantom"], "sequence": ["T1w"]},
                 "overrides": {**TINY_DOWNSTREAM, "demo_data_dir": "{out_dir}/data/downstream"}}
    grid_path = write_grid(tmp_path / "grid", extra_downstream=[denoising])
    grid = yaml.safe_load(grid_path.read_text())
    grid["downstream"][0]["overrides"]["save_predictions"] = True  # the overlays' label maps, as demo.yaml does
    grid_path.write_text(yaml.safe_dump(grid))
    # As a user types it: the default output folder (relative) and a relative grid path, from the current folder.
    monkeypatch.chdir(tmp_path)
    out = Path("demo_out")
    assert main(["demo", "--resolution-mm", "2", "--random-protocols", "1", "--quiet",
                 "--grid", str(Path("grid") / "grid.yaml"), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Pearson r" in printed and "tissue: dice_mean" in printed and "denoising: psnr_db" in printed
    assert "Random init" in printed and "SeqInv" in printed and "peak memory" in printed

    summary = json.loads((out / "summary.json").read_text())
    experiment = summary["experiment"]
    assert experiment["runs"] == experiment["finished"] == 5 and experiment["failed"] == []
    assert set(summary["stage_seconds"]) == {"simulation", "bundle_runs", "tables_and_figures"}
    assert 0 < summary["peak_memory_gb"] < 6
    for figure in experiment["figures"] + ["montage.png"]:
        png = (out / figure).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, figure
    assert sorted(experiment["figures"]) == ["figures/learning_curves.png", "figures/metrics.png",
                                             "figures/tissue_overlays.png"]
    assert (out / "grid.yaml").read_text() == grid_path.read_text()  # the configuration used

    # The Markdown table holds the numbers the runs' own evaluation reports computed.
    table = (out / "results.md").read_text()
    runs = {row["label"]: row for row in csv.DictReader(open(out / "runs.csv"))}
    report = json.loads((Path(runs["tissue-seqinv-frac1-seed0"]["folder"]) / "logs" / "evaluation" /
                         "summary.json").read_text())
    dice = report["by_site_sequence"]["mni152/T1w"]["dice_mean"]["mean"]
    row = [line for line in table.split("tissue: dice_mean")[1].splitlines() if line.startswith("| mni152 [T1w]")][0]
    assert f"{dice:.3f} ± 0.000" in row
    # Predictions of both test subjects' images are kept apart (sub-folders), one per test image.
    predictions = sorted((Path(runs["tissue-random-frac1-seed0"]["folder"]) / "predictions").rglob("*_seg.nii.gz"))
    test_images = json.loads((out / "data" / "downstream" / "datalist.json").read_text())["test"]
    assert len(predictions) == len(test_images)


def test_demo_with_a_failed_run_exits_1_and_says_why_last(tmp_path, capsys, monkeypatch):
    from test_experiment import write_grid

    grid_path = write_grid(tmp_path / "grid", modes=("random",))
    grid = yaml.safe_load(grid_path.read_text())
    grid["downstream"][0]["overrides"]["dataset_dir"] = "no_such_manifest.json"  # relative: from the current folder
    grid_path.write_text(yaml.safe_dump(grid))
    monkeypatch.chdir(tmp_path)
    bundles = os.path.relpath(Path(__file__).resolve().parents[1] / "bundles")  # relative, from the current folder
    assert main(["demo", "--resolution-mm", "4", "--random-protocols", "1", "--quiet",
                 "--grid", str(Path("grid") / "grid.yaml"), "--bundles-dir", bundles]) == 1
    printed = capsys.readouterr().out
    assert "INCOMPLETE RESULTS: 1 of 1 runs did not finish" in printed
    closing = printed.strip().splitlines()[-4:]
    assert closing[0].startswith("1 of 1 runs did not finish (1 failed, 0 skipped): tissue-random-frac1-seed0")
    assert str(tmp_path.resolve() / "no_such_manifest.json") in closing[1]
    assert closing[2].startswith("its log: ") and closing[2].endswith("train.log")
    assert "Incomplete" in (Path("demo_out") / "results.md").read_text()
