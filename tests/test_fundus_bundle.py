"""fundus_camcontrast end to end through `python -m monai.bundle run` on a tiny config, every stage once.

One module-scoped chain (stage 1, its evaluation, heatmap generation, CAM overlays, CAMContrast pretraining,
classification and segmentation fine-tuning on the pretrained encoder, their evaluations) keeps the slow part to a
few subprocesses; the tests then read what the runs left on disk.
"""

import csv
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bundle_runner import bundle_dir, run_bundle, write_override
from mri_ssl.engines import load_checkpoint, load_encoder

TINY = {
    "demo_images": 16,
    "demo_validation_images": 4,
    "demo_test_images": 4,
    "demo_size": 64,
    "image_size": 64,
    "features": [4, 8, 8],
    "heatmap_features": [4, 4, 8],
    "projection_hidden": 16,
    "decoder_features": [8, 8, 4, 4],
    "batch_size": 4,
    "num_epochs": 2,
    "epoch_length": None,  # one pass over the data per epoch (cpu_demo.json's 15 steps are for the real demo)
    "num_workers": 0,
    "progress_bar": False,
}
CONFIGS = bundle_dir("fundus_camcontrast") / "configs"


def run(root, *configs, **overrides):
    files = [str(CONFIGS / f"{name}.json") for name in configs]
    files += [str(CONFIGS / "cpu_demo.json"), str(root / "tiny.json")]
    if overrides:
        files.append(str(write_override(root, f"override_{len(list(root.glob('override_*')))}.json", **overrides)))
    result = run_bundle(root, files)
    assert result.returncode == 0, f"{configs}:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("fundus_camcontrast")
    write_override(root, **TINY)
    run(root, "stage1")
    run(root, "stage1", "evaluate")
    run(root, "stage1", "generate_heatmaps")
    run(root, "stage1", "inference", checkpoint=str(root / "models" / "stage1" / "best.pt"))
    run(root, "pretrain")
    run(root, "finetune_cls", linear_evaluation=True)
    run(root, "finetune_cls", "evaluate", linear_evaluation=True)
    run(root, "finetune_seg", label_fraction=0.5)
    run(root, "finetune_seg", "evaluate", label_fraction=0.5)
    return root


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_stage1_trains_and_scores_cam_localisation(chain):
    models = chain / "models" / "stage1"
    assert {"latest.pt", "best.pt", "final.pt", "encoder_best.pt", "encoder_final.pt"} <= {
        p.name for p in models.iterdir()}
    assert load_checkpoint(models / "latest.pt")["epoch"] == TINY["num_epochs"]
    summary = json.loads((chain / "logs" / "stage1" / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == TINY["demo_test_images"]
    assert summary["localised_cases"] == TINY["demo_test_images"] // 2  # the abnormal half, all with lesions
    for key in ("roc_auc", "f1", "accuracy", "pointing_game", "cam_iou"):
        assert 0.0 <= summary[key] <= 1.0, key
    rows = read_rows(chain / "logs" / "stage1" / "evaluation" / "per_case.csv")
    hits = [int(r["pointing_hit"]) for r in rows if r["pointing_hit"]]
    assert summary["pointing_game"] == pytest.approx(np.mean(hits))


@pytest.mark.slow
def test_heatmap_crops_are_suppressed_and_fit_the_image_crops(chain):
    crops = json.loads((chain / "heatmaps" / "crops_datalist.json").read_text())
    training = TINY["demo_images"] - TINY["demo_validation_images"] - TINY["demo_test_images"]
    assert len(crops["training"]) == 5 * training and len(crops["validation"]) == 5 * TINY["demo_validation_images"]
    assert crops["negative_suppression"] and crops["background_suppression"]
    cam_size = TINY["image_size"] // 2 ** (len(TINY["features"]) - 1)
    for entry in crops["training"]:
        image = np.asarray(Image.open(chain / "heatmaps" / entry["image"]))
        heatmap = np.load(chain / "heatmaps" / entry["heatmap"])
        assert image.shape == (TINY["image_size"] // 2, TINY["image_size"] // 2, 3)
        assert heatmap.shape == (cam_size // 2, cam_size // 2) and heatmap.dtype == np.float32
        assert np.isfinite(heatmap).all() and 0.0 <= heatmap.min() and heatmap.max() <= 1.0
        if entry["abnormal"] == 0:
            assert not heatmap.any(), "negative suppression zeroes the heatmaps of normal images"
    assert {e["position"] for e in crops["training"]} == {"tl", "tr", "bl", "br", "c"}


@pytest.mark.slow
def test_cam_overlays_are_written_for_the_test_images(chain):
    folder = chain / "predictions" / "stage1"
    rows = read_rows(folder / "predictions.csv")
    assert len(rows) == TINY["demo_test_images"]
    for row in rows:
        assert 0.0 <= float(row["p_abnormal"]) <= 1.0
        overlay = np.asarray(Image.open(row["overlay"]))
        assert overlay.shape == (TINY["image_size"], TINY["image_size"], 3)


@pytest.mark.slow
def test_pretraining_exports_the_image_encoder_used_downstream(chain):
    exported = chain / "models" / "pretrain_camcontrast" / "encoder_final.pt"
    encoder = load_encoder(exported)
    assert encoder.spatial_dims == 2 and encoder.in_channels == 3 and list(encoder.features) == TINY["features"]
    final = load_checkpoint(chain / "models" / "pretrain_camcontrast" / "final.pt")
    assert any(key.startswith("heatmap_encoder.") for key in final["network"])
    # The label-free probe ran at step 0 (beside a random-init network) and after every epoch, and chose best.pt.
    probe = json.loads((chain / "logs" / "pretrain_camcontrast" / "probe.json").read_text())
    assert [h["epoch"] for h in probe["history"]] == list(range(TINY["num_epochs"] + 1))
    assert probe["history"][0]["iteration"] == 0 and 0.0 <= probe["random_init"]["auc"] <= 1.0
    assert all(h["n"] == TINY["demo_validation_images"] for h in probe["history"])
    # Beside it the lesion-patch probe (the demo data have lesion masks), which best.pt is chosen on (``auto``).
    assert all(h["lesion_crop_size"] == TINY["image_size"] // 2 and h["score"] == h["lesion_auc"]
               for h in probe["history"]) and 0.0 <= probe["random_init"]["lesion_auc"] <= 1.0
    best = load_checkpoint(chain / "models" / "pretrain_camcontrast" / "best.pt")
    assert best["best_metric"] == max(h["score"] for h in probe["history"][1:])
    # Linear evaluation keeps the pretrained encoder bit for bit.
    classifier = load_checkpoint(next((chain / "models").glob("finetune_cls_camcontrast_linear*")) / "final.pt")
    for key, value in encoder.state_dict().items():
        assert torch.equal(classifier["network"][f"encoder.{key}"], value), key


@pytest.mark.slow
def test_transfer_evaluations_report_their_metrics(chain):
    cls = json.loads(next((chain / "logs").glob("finetune_cls_*")).joinpath("evaluation", "summary.json").read_text())
    assert cls["cases"] == TINY["demo_test_images"] and 0.0 <= cls["roc_auc"] <= 1.0
    seg = json.loads(next((chain / "logs").glob("finetune_seg_*")).joinpath("evaluation", "summary.json").read_text())
    assert seg["cases"] == TINY["demo_test_images"] and seg["cases_with_lesions"] == TINY["demo_test_images"] // 2
    for key in ("dice_mean", "dice_pooled", "auc_pr"):
        assert 0.0 <= seg[key] <= 1.0 and math.isfinite(seg[key]), key


@pytest.mark.slow
def test_datalist_naming_a_missing_image_fails_before_training(tmp_path, chain):
    datalist = json.loads((chain / "demo_data" / "datalist.json").read_text())
    entry = datalist["training"][0]
    bad = {"training": [{**entry, "image": str(chain / "demo_data" / entry["image"]),
                         "mask": str(chain / "demo_data" / entry["mask"])},
                        {**entry, "image": str(tmp_path / "missing_fundus.png"), "mask": None}],
           "validation": []}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    write_override(tmp_path, **TINY)
    override = write_override(tmp_path, "bad_override.json", dataset_dir=str(tmp_path / "bad.json"))
    result = run_bundle(tmp_path, [str(CONFIGS / "stage1.json"), str(CONFIGS / "cpu_demo.json"),
                                   str(tmp_path / "tiny.json"), str(override)])
    assert result.returncode != 0
    assert "missing_fundus.png: file not found" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_multi_gpu_pretraining_runs_as_two_cpu_processes(chain):
    """multi_gpu_train.json under torchrun with 2 gloo processes on the chain's heatmap crops. Every rank runs the same
    collectives (DDP's, the loss's all-gather and all-reduce; saving is rank 0's and has none), and a process-group
    timeout of 60 s turns a collective mismatch into an error long before the subprocess timeout, instead of a hang."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    override = write_override(chain, "ddp_override.json", stage="pretrain_ddp", process_group_timeout_s=60,
                              num_epochs=2)
    files = [str(CONFIGS / "pretrain.json"), str(CONFIGS / "multi_gpu_train.json"), str(CONFIGS / "cpu_demo.json"),
             str(chain / "tiny.json"), str(override)]
    result = run_bundle(chain, files, timeout=300, launcher=launcher)
    assert result.returncode == 0, result.stderr[-4000:]
    final = load_checkpoint(chain / "models" / "pretrain_ddp" / "final.pt")
    # 40 training crops, 20 per rank, batches of 4 on each rank: 5 steps per epoch.
    crops = len(json.loads((chain / "heatmaps" / "crops_datalist.json").read_text())["training"])
    assert final["epoch"] == 2 and final["iteration"] == 2 * (crops // 2 // TINY["batch_size"])
    assert not any(key.startswith("module.") for key in final["network"])  # DDP unwrapped before saving
    assert any(key.startswith("heatmap_encoder.") for key in final["network"])
    assert all(torch.isfinite(value).all() for value in final["network"].values() if value.is_floating_point())
    assert load_encoder(chain / "models" / "pretrain_ddp" / "encoder_final.pt").spatial_dims == 2
