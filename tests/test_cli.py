"""The `mri-ssl simulate` command: round trip keeps the affine, bad input exits non-zero with no partial output."""

import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from mri_ssl.cli import EXIT_BAD_INPUT, main
from mri_ssl.physics import TYPICAL_PROTOCOLS, sample_protocol, simulate

AFFINE = np.array([[0, 0, 1.2, -30], [-1.1, 0, 0, 40], [0, 1.3, 0, -12], [0, 0, 0, 1]])  # oblique axes on purpose
SHAPE = (9, 8, 7)


@pytest.fixture()
def maps_dir(tmp_path):
    rng = np.random.default_rng(1)
    values = {"pd": rng.uniform(0.4, 1, SHAPE), "r1": rng.uniform(0.3, 2, SHAPE), "r2s": rng.uniform(5, 30, SHAPE),
              "mt": rng.uniform(0, 0.03, SHAPE)}
    folder = tmp_path / "maps"
    folder.mkdir()
    for name, data in values.items():
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), str(folder / f"sub-01_{name.upper()}.nii.gz"))
    return folder


def read_maps(folder):
    return {name: torch.from_numpy(np.asarray(nib.load(str(folder / f"sub-01_{name.upper()}.nii.gz")).dataobj,
                                              dtype=np.float32)) for name in ("pd", "r1", "r2s", "mt")}


def test_round_trip_keeps_affine_and_matches_library(maps_dir, tmp_path, capsys):
    out = tmp_path / "flair.nii.gz"
    assert main(["simulate", "--maps", str(maps_dir), "--sequence", "FLAIR", "--tr", "8", "--out", str(out)]) == 0
    image = nib.load(str(out))
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)
    assert image.shape == SHAPE
    protocol = {**TYPICAL_PROTOCOLS["flair"], "tr": 8.0}
    expected = simulate(read_maps(maps_dir), "flair", protocol).numpy()
    np.testing.assert_allclose(np.asarray(image.dataobj), expected, rtol=1e-6)
    sidecar = json.loads((tmp_path / "flair.json").read_text())
    assert sidecar["sequence"] == "flair" and sidecar["protocol"]["tr"] == 8.0
    assert "wrote" in capsys.readouterr().out


def test_flip_angle_in_degrees_and_explicit_files(maps_dir, tmp_path):
    out = tmp_path / "gre.nii.gz"
    files = [f"{name}={maps_dir / f'sub-01_{name.upper()}.nii.gz'}" for name in ("pd", "r1", "r2s")]
    assert main(["simulate", "--maps", *files, "--sequence", "gre", "--tr", "0.03", "--te", "0.004",
                 "--flip-angle-deg", "20", "--out", str(out)]) == 0
    maps = read_maps(maps_dir)
    del maps["mt"]
    expected = simulate(maps, "gre", {"tr": 0.03, "te": 0.004, "flip_angle": math.radians(20)}).numpy()
    np.testing.assert_allclose(np.asarray(nib.load(str(out)).dataobj), expected, rtol=1e-6)


def test_random_protocol_is_seeded(maps_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.nii.gz"
        assert main(["simulate", "--maps", str(maps_dir), "--sequence", "mprage", "--random", "--seed", "5",
                     "--out", str(out)]) == 0
        outs.append(json.loads((tmp_path / f"{name}.json").read_text())["protocol"])
    assert outs[0] == outs[1]
    drawn = sample_protocol("mprage", 1, torch.Generator().manual_seed(5))
    assert outs[0]["tr"] == pytest.approx(float(drawn["tr"][0]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sequence", "dwi"], "unknown sequence"),
        (["--sequence", "fse", "--tr", "0.01", "--te", "0.05"], "te"),
        (["--sequence", "flair", "--tr", "2", "--ti", "2.5"], "ti"),
        (["--sequence", "gre", "--flip-angle-deg", "190"], "flip_angle"),
        (["--sequence", "fse", "--ti", "1"], "--ti"),
        (["--sequence", "gre", "--random", "--tr", "1"], "--random"),
    ],
)
def test_bad_parameters_exit_non_zero_before_reading_maps(maps_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "never.nii.gz"
    assert main(["simulate", "--maps", str(maps_dir), *extra, "--out", str(out)]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["maps"]


def test_bad_maps_name_the_file_and_leave_no_output(maps_dir, tmp_path, capsys):
    r1 = maps_dir / "sub-01_R1.nii.gz"
    data = np.asarray(nib.load(str(r1)).dataobj).copy()
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, AFFINE), str(r1))
    out = tmp_path / "x.nii.gz"
    assert main(["simulate", "--maps", str(maps_dir), "--sequence", "fse", "--out", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "sub-01_R1.nii.gz" in err and "non-finite" in err
    assert os.listdir(tmp_path) == ["maps"]


def test_two_dimensional_map_is_rejected(tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    for name in ("pd", "r1", "r2s"):
        nib.save(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), str(folder / f"{name}.nii.gz"))
    assert main(["simulate", "--maps", str(folder), "--sequence", "fse", "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "expected 3" in capsys.readouterr().err


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "mri_ssl", "simulate", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--flip-angle-deg" in result.stdout and "--maps" in result.stdout


def test_manifest_command_writes_and_summarises_an_ixi_manifest(tmp_path, capsys):
    data = tmp_path / "IXI"
    data.mkdir()
    for number, site in ((2, "Guys"), (12, "Guys"), (13, "Guys"), (14, "HH")):
        stem = f"IXI{number:03d}-{site}-{1000 + number}-T1"
        for name in (stem, f"{stem}_label"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(data / f"{name}.nii.gz"))
    out = tmp_path / "manifests" / "ixi.json"
    assert main(["manifest", "ixi", str(data), "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "GST" in printed and "HH" in printed and str(out) in printed
    manifest = json.loads(out.read_text())
    assert {e["site"] for e in manifest["test"]} >= {"HH"}
    assert all(e["site"] == "GST" for e in manifest["training"] + manifest["validation"])
    assert all(os.path.isabs(e["image"]) and e["label"].endswith("_label.nii.gz") for e in manifest["training"])


def test_manifest_command_names_a_missing_folder(tmp_path, capsys):
    assert main(["manifest", "arc", str(tmp_path / "nope"), "--out", str(tmp_path / "arc.json")]) == EXIT_BAD_INPUT
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "arc.json").exists()
