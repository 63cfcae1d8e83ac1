"""mri_segmentation and mri_denoising end to end through `python -m monai.bundle run` on a tiny config.

One module-scoped run per bundle (train, then evaluate, then inference) keeps the slow part to a few subprocesses;
the tests then read what the runs left on disk.
"""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_runner import bundle_dir, run_bundle, write_override
from mri_ssl.data.brain.demo import BRAIN_DOWNSTREAM_DEMO
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.engines import export_encoder, load_checkpoint
from mri_ssl.networks import CNNEncoder3D

TINY = {
    "demo_resolution_mm": 4.0,
    "demo_subjects": 4,
    "demo_validation_subjects": 1,
    "demo_test_subjects": 1,
    "features": [4, 8, 8],
    "decoder_features": [8, 8, 4, 4],
    "patch_size": [16, 16, 16],
    "batch_size": 2,
    "num_epochs": 2,
    "epoch_length": 2,
    "val_interval": 2,  # validate once, at the end
    "num_workers": 0,
    "sw_batch_size": 8,
    "progress_bar": False,
}
TEST_IMAGES = 6  # one test subject: T1w, T2w, PDw, FLAIR, GRE simulated, plus the real MNI152 T1


@pytest.fixture(scope="module")
def demo_data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("downstream_demo_data")
    resolve_datalist("", folder, BRAIN_DOWNSTREAM_DEMO, resolution_mm=TINY["demo_resolution_mm"],
                     subjects=TINY["demo_subjects"], validation_subjects=TINY["demo_validation_subjects"],
                     test_subjects=TINY["demo_test_subjects"])
    return folder


@pytest.fixture(scope="module")
def pretrained_encoder(tmp_path_factory):
    torch.manual_seed(3)
    encoder = CNNEncoder3D(features=TINY["features"])
    return export_encoder(encoder, tmp_path_factory.mktemp("encoder") / "encoder_best.pt")


def reoriented_copy(source, folder):
    """The image flipped to LPS orientation, so inference must undo its own RAS reorientation."""
    image = nib.load(str(source))
    flipped = nib.as_closest_canonical(image).slicer[::-1, ::-1, :]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lps_input.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(flipped.dataobj, dtype=np.float32), flipped.affine), str(path))
    return path


def run_train_evaluate_infer(name, root, demo_data_dir, encoder_path):
    configs = [str(bundle_dir(name) / "configs" / f) for f in ("train.json", "cpu_demo.json")]
    datalist = json.loads((demo_data_dir / "datalist.json").read_text())
    input_dir = root / "inputs"
    reoriented_copy(demo_data_dir / datalist["test"][0]["image"], input_dir)
    tiny = write_override(root, demo_data_dir=str(demo_data_dir), encoder_path=str(encoder_path), **TINY)
    results = {}
    for stage, extra in (("train", []), ("evaluate", ["evaluate.json"]), ("inference", ["inference.json"])):
        files = [configs[0]] + [str(bundle_dir(name) / "configs" / f) for f in extra] + [configs[1], str(tiny)]
        if stage == "inference":
            files.append(str(write_override(root, "inputs.json", input_dir=str(input_dir),
                                            checkpoint=str(root / "models" / "best.pt"))))
        results[stage] = run_bundle(root, files)
        assert results[stage].returncode == 0, f"{stage}:\n{results[stage].stderr[-4000:]}"
    return results


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory, demo_data_dir, pretrained_encoder):
    root = tmp_path_factory.mktemp("segmentation")
    return root, run_train_evaluate_infer("mri_segmentation", root, demo_data_dir, pretrained_encoder)


@pytest.fixture(scope="module")
def denoising_run(tmp_path_factory, demo_data_dir, pretrained_encoder):
    root = tmp_path_factory.mktemp("denoising")
    return root, run_train_evaluate_infer("mri_denoising", root, demo_data_dir, pretrained_encoder)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_frozen_encoder_kept(models, encoder_path):
    exported = load_checkpoint(encoder_path)["state_dict"]
    trained = load_checkpoint(models / "final.pt")["network"]
    for key, value in exported.items():
        assert torch.equal(trained[f"encoder.{key}"], value), key


def assert_inference_keeps_geometry(root, suffix, dtype):
    source = nib.load(str(root / "inputs" / "lps_input.nii.gz"))
    outputs = sorted((root / "predictions").glob(f"*{suffix}.nii.gz"))
    assert len(outputs) == 1, list((root / "predictions").iterdir())
    output = nib.load(str(outputs[0]))
    assert output.shape[:3] == source.shape
    np.testing.assert_allclose(output.affine, source.affine, atol=1e-4)
    assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(source.affine) == ("L", "P", "S")
    assert output.get_data_dtype() == dtype
    return np.asarray(output.dataobj), np.asarray(source.dataobj)


@pytest.mark.slow
def test_segmentation_trains_evaluates_and_infers(segmentation_run, pretrained_encoder):
    root, _ = segmentation_run
    models = root / "models"
    assert {"latest.pt", "best.pt", "final.pt"} <= {p.name for p in models.iterdir()}
    assert not list(models.glob("encoder_*.pt")), "a frozen encoder is not re-exported"
    latest = load_checkpoint(models / "latest.pt")
    assert latest["epoch"] == TINY["num_epochs"] and 0.0 <= latest["best_metric"] <= 1.0
    assert_frozen_encoder_kept(models, pretrained_encoder)

    evaluation = root / "logs" / "evaluation"
    rows = read_rows(evaluation / "per_case.csv")
    assert len(rows) == TEST_IMAGES
    simulated = {("phantom", sequence) for sequence in ("T1w", "T2w", "PDw", "FLAIR", "GRE")}
    assert {(r["site"], r["sequence"]) for r in rows} == simulated | {("mni152", "T1w")}
    for row in rows:
        for name in ("grey_matter", "white_matter", "csf"):
            dice = float(row[f"dice_{name}"])
            assert 0.0 <= dice <= 1.0
            hd95 = float(row[f"hd95_mm_{name}"])
            assert hd95 >= 0.0 and math.isfinite(hd95)
    summary = json.loads((evaluation / "summary.json").read_text())
    assert set(summary["by_site"]) == {"phantom", "mni152"}
    assert {"T1w", "T2w", "PDw", "FLAIR", "GRE"} <= set(summary["by_sequence"])
    assert (evaluation / "summary.md").read_text().count("|") > 10

    labels, _ = assert_inference_keeps_geometry(root, "seg", np.uint8)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_denoising_trains_evaluates_and_infers(denoising_run, pretrained_encoder):
    root, _ = denoising_run
    models = root / "models"
    assert {"latest.pt", "best.pt", "final.pt"} <= {p.name for p in models.iterdir()}
    assert_frozen_encoder_kept(models, pretrained_encoder)
    assert math.isfinite(load_checkpoint(models / "latest.pt")["best_metric"])

    rows = read_rows(root / "logs" / "evaluation" / "per_case.csv")
    assert len(rows) == TEST_IMAGES
    for row in rows:
        assert math.isfinite(float(row["psnr_db"])) and math.isfinite(float(row["psnr_peak1_db"]))
        # Noise of sigma 0.2 on z-scored data alone gives a peak-1 PSNR of 20 log10(1 / 0.2) = 14 dB.
        assert float(row["psnr_peak1_db"]) > 5.0

    denoised, source = assert_inference_keeps_geometry(root, "denoised", np.float32)
    # Back in the input's units (the z-scoring undone), not z-scores of mean 0 and std 1; the tiny network is barely
    # trained, so only the scale is checked here (the exact mapping is tested in test_noise.py).
    assert abs(denoised.mean() - source.mean()) < 0.5 * source.std()
    assert 0.5 < denoised.std() / source.std() < 2.0


@pytest.mark.slow
def test_evaluation_noise_is_seeded(denoising_run, tmp_path):
    """The reference code left test noise unseeded; here a second evaluation gives the same PSNR to the digit."""
    root, _ = denoising_run
    first = read_rows(root / "logs" / "evaluation" / "per_case.csv")
    configs = [str(bundle_dir("mri_denoising") / "configs" / f)
               for f in ("train.json", "evaluate.json", "cpu_demo.json")]
    result = run_bundle(root, configs + [str(root / "tiny.json"),
                                         str(write_override(tmp_path, evaluation_dir=str(tmp_path / "again")))])
    assert result.returncode == 0, result.stderr[-3000:]
    second = read_rows(tmp_path / "again" / "per_case.csv")
    assert [r["psnr_db"] for r in first] == [r["psnr_db"] for r in second]


@pytest.mark.parametrize("bundle", ["mri_segmentation", "mri_denoising"])
def test_bad_manifest_fails_before_training_naming_the_file(tmp_path, demo_data_dir, bundle):
    datalist = json.loads((demo_data_dir / "datalist.json").read_text())
    entry = datalist["training"][0]
    image = nib.load(str(demo_data_dir / entry["image"]))
    short_label = tmp_path / "short_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(np.array(image.shape) - [0, 0, 2], np.uint8), image.affine), str(short_label))
    bad = {**datalist, "training": [{**entry, "image": str(demo_data_dir / entry["image"]),
                                     "label": str(short_label)},
                                    {**entry, "image": str(tmp_path / "missing_T1w.nii.gz")}],
           "validation": []}
    manifest = tmp_path / "bad_manifest.json"
    manifest.write_text(json.dumps(bad))
    configs = [str(bundle_dir(bundle) / "configs" / f) for f in ("train.json", "cpu_demo.json")]
    tiny = write_override(tmp_path, **{**TINY, "dataset_dir": str(manifest)})
    result = run_bundle(tmp_path, configs + [str(tiny)])
    assert result.returncode != 0
    if bundle == "mri_segmentation":  # the label is checked first: a label two voxels shorter than its image
        assert "short_label.nii.gz: label shape" in result.stderr, result.stderr[-2000:]
    else:  # denoising reads no labels; the missing image is found
        assert "missing_T1w.nii.gz: file not found" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "models").exists()
