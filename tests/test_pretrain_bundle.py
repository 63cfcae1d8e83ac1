"""The mri_ssl_pretrain bundle end to end on a tiny config: every view mode, resume, DDP on CPU, bad input, NaN."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from bundle_runner import run_bundle, write_override
from mri_ssl.data.brain.demo import BRAIN_PRETRAIN_DEMO
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.engines import NonFiniteLossError, load_checkpoint, load_encoder

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mri_ssl_pretrain"
CONFIGS = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "cpu_demo.json")]
TINY = {
    "demo_resolution_mm": 4.0,
    "demo_subjects": 5,
    "demo_validation_subjects": 2,
    "features": [4, 8, 8, 8],  # four stages: a 16^3 crop keeps 2^3 voxels at the bottom for instance norm
    "reconstruction_channels": [8, 8, 4],
    "projection_hidden": 16,
    "projection_dim": 8,
    "crop_size": [16, 16, 16],
    "batch_size": 2,
    "num_epochs": 2,
    "epoch_length": 2,
    "val_interval": 1,
    "probe_crops_per_subject": 4,
    "probe_groups": 2,
    "num_workers": 0,
    "progress_bar": False,
}


@pytest.fixture(scope="module")
def demo_data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain_demo_data")
    resolve_datalist("", folder, BRAIN_PRETRAIN_DEMO, resolution_mm=TINY["demo_resolution_mm"],
                     subjects=TINY["demo_subjects"], validation_subjects=TINY["demo_validation_subjects"])
    return folder


def tiny_config(tmp_path, demo_data_dir, **overrides):
    config = {**TINY, "demo_data_dir": str(demo_data_dir), **overrides}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode, extra", [
    ("base", {}),
    ("base", {"input_is_image": True, "image_key": "t1"}),
    ("seqaug", {}),
    ("seqinv", {"reconstruction_weight": 0.0}),
])
def test_each_view_mode_trains_through_monai_bundle_run(tmp_path, demo_data_dir, mode, extra):
    tiny = tiny_config(tmp_path, demo_data_dir, view_mode=mode, **extra)
    result = run_bundle(tmp_path, CONFIGS + [str(tiny)])
    assert result.returncode == 0, result.stderr[-3000:]
    models = tmp_path / "models"
    assert {p.name for p in models.iterdir()} >= {"latest.pt", "best.pt", "final.pt", "encoder_final.pt"}
    assert not [p for p in models.iterdir() if "partial" in p.name]
    latest = load_checkpoint(models / "latest.pt")
    assert latest["epoch"] == 2 and latest["iteration"] == 4
    assert math.isfinite(latest["best_metric"])
    has_reconstructor = any(k.startswith("reconstructor.") for k in latest["network"])
    assert has_reconstructor == (extra.get("reconstruction_weight", 1.0) > 0)
    encoder = load_encoder(models / "encoder_final.pt")
    assert encoder.features == tuple(TINY["features"])
    assert encoder(torch.randn(1, 1, 16, 16, 16)).shape == (1, TINY["features"][-1])
    if mode == "seqaug":  # inference.json: one CSV row of encoder features per validation volume
        weights = write_override(tmp_path, "weights.json", checkpoint=str(tmp_path / "models" / "encoder_final.pt"))
        result = run_bundle(tmp_path, [str(BUNDLE / "configs" / "inference.json"), CONFIGS[1], str(tiny), str(weights)])
        assert result.returncode == 0, result.stderr[-3000:]
        rows = (tmp_path / "features" / "features.csv").read_text().splitlines()
        assert len(rows) == 1 + TINY["demo_validation_subjects"]
        assert len(rows[1].split(",")) == 1 + TINY["features"][-1]
        assert rows[1].split(",")[0].endswith("t1.nii.gz")


def _workflow(tmp_path, demo_data_dir, **overrides):
    tiny = tiny_config(tmp_path, demo_data_dir, **overrides)
    return ConfigWorkflow(config_file=CONFIGS + [str(tiny)], workflow_type="train", bundle_root=str(tmp_path))


def _network_state(path):
    return load_checkpoint(path)["network"]


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tmp_path, demo_data_dir):
    straight = tmp_path / "straight"
    workflow = _workflow(straight, demo_data_dir, num_epochs=3)
    workflow.initialize()
    workflow.run()
    expected = _network_state(straight / "models" / "final.pt")

    interrupted = tmp_path / "interrupted"
    workflow = _workflow(interrupted, demo_data_dir, num_epochs=3)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    workflow.run()
    assert load_checkpoint(interrupted / "models" / "latest.pt")["epoch"] == 1

    workflow = _workflow(interrupted, demo_data_dir, num_epochs=3, resume=True)
    workflow.initialize()
    workflow.run()
    resumed = load_checkpoint(interrupted / "models" / "final.pt")
    assert resumed["epoch"] == 3
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed["network"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_non_finite_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path, demo_data_dir):
    workflow = _workflow(tmp_path, demo_data_dir, num_epochs=3)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    real_loss = trainer.contrastive_loss

    def loss_that_explodes_in_epoch_two(z1, z2):
        value = real_loss(z1, z2)
        return value * float("nan") if trainer.state.epoch == 2 else value

    trainer.contrastive_loss = loss_that_explodes_in_epoch_two
    with pytest.raises(Exception) as raised:  # MONAI wraps errors of config expressions in a RuntimeError
        workflow.run()
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(isinstance(e, NonFiniteLossError) and "non-finite loss" in str(e) for e in chain), chain
    latest = load_checkpoint(tmp_path / "models" / "latest.pt")
    assert latest["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in latest["network"].values() if t.is_floating_point())
    assert not (tmp_path / "models" / "final.pt").exists()


def test_bad_datalist_fails_at_start_naming_the_file(tmp_path, demo_data_dir):
    data = tmp_path / "data"
    shutil.copytree(demo_data_dir, data)
    (data / "sub-01" / "r1.nii.gz").unlink()
    result = run_bundle(tmp_path, CONFIGS + [str(tiny_config(tmp_path, demo_data_dir, dataset_dir=str(data)))])
    assert result.returncode != 0
    assert "sub-01/r1.nii.gz" in result.stderr and "file not found" in result.stderr
    assert "Epoch" not in result.stdout + result.stderr

    pd = data / "sub-02" / "pd.nii.gz"
    shutil.copy(demo_data_dir / "sub-01" / "r1.nii.gz", data / "sub-01" / "r1.nii.gz")
    pd.write_bytes(pd.read_bytes()[: pd.stat().st_size // 2])
    result = run_bundle(tmp_path, CONFIGS + [str(tiny_config(tmp_path, demo_data_dir, dataset_dir=str(data)))])
    assert result.returncode != 0
    assert "sub-02/pd.nii.gz" in result.stderr and "truncated" in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, demo_data_dir):
    tiny = tiny_config(tmp_path, demo_data_dir)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    configs = [CONFIGS[0], str(BUNDLE / "configs" / "multi_gpu_train.json"), CONFIGS[1], str(tiny)]
    result = run_bundle(tmp_path, configs, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    latest = load_checkpoint(tmp_path / "models" / "latest.pt")
    assert latest["epoch"] == 2
    assert not any(k.startswith("module.") for k in latest["network"])  # DDP unwrapped before saving
