"""The cardiac bundle's configuration files: ablations, external brain evaluation, multi-GPU pretraining."""

import json
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from bundle_runner import bundle_dir, run_bundle

BUNDLE = bundle_dir("cardiac_sequence_classification")
CONFIGS = BUNDLE / "configs"


def parser(*names, **overrides) -> ConfigParser:
    config = ConfigParser()
    config.read_config([str(CONFIGS / name) for name in names])
    config.update({"bundle_root": "/bundle", **overrides})
    return config


def test_every_config_is_json_and_the_bundle_has_its_files():
    for path in CONFIGS.rglob("*.json"):
        json.loads(path.read_text())
    for name in ("LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt", "configs/metadata.json",
                 "configs/logging.conf", "configs/inference.json", "configs/multi_gpu_train.json"):
        assert (BUNDLE / name).is_file(), name
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for config in CONFIGS.glob("*.json"):
        if config.name not in ("metadata.json",):
            assert config.name in readme, f"docs/README.md does not show how to use {config.name}"


@pytest.mark.parametrize("batch", [4, 8, 16, 32, 64, 128, 256, 512, 1024])
def test_batch_size_ablation_scales_the_learning_rate_and_keeps_runs_apart(batch):
    config = parser("pretrain.json", f"ablations/batch_size_{batch}.json")
    assert config.get_parsed_content("learning_rate") == pytest.approx(0.05 * batch / 256)
    assert config.get_parsed_content("ckpt_dir") == f"/bundle/models/ablation_batch_{batch}/simsiam"
    finetune = parser("train.json", f"ablations/batch_size_{batch}.json")
    assert finetune.get_parsed_content("encoder_path") == \
        f"/bundle/models/ablation_batch_{batch}/simsiam/encoder_best.pt"
    assert finetune.get_parsed_content("ckpt_dir") == f"/bundle/models/ablation_batch_{batch}"


@pytest.mark.parametrize("percent", [1, 3, 10, 30, 100])
def test_data_fraction_ablation(percent):
    config = parser("pretrain.json", f"ablations/data_fraction_{percent}.json")
    assert config.get_parsed_content("data_fraction") == pytest.approx(percent / 100)


def test_external_brain_evaluation_reads_t1w_and_t2w_of_a_brain_manifest(tmp_path):
    manifest = {"test": [{"image": "s1_T1w.nii.gz", "subject": "s1", "site": "GST", "sequence": "T1w"},
                         {"image": "s1_PDw.nii.gz", "subject": "s1", "site": "GST", "sequence": "PDw"},
                         {"image": "s2_T2w.nii.gz", "subject": "s2", "site": "GST", "sequence": "T2w"}]}
    path = tmp_path / "ixi.json"
    path.write_text(json.dumps(manifest))
    config = parser("train.json", "evaluate.json", "external_brain.json", dataset_dir=str(path))
    data = config.get_parsed_content("evaluate#dataset#data")
    assert [(Path(d["image"]).name, d["label"]) for d in data] == [("s1_T1w.nii.gz", 0), ("s2_T2w.nii.gz", 1)]


@pytest.mark.slow
def test_multi_gpu_pretraining_runs_under_torchrun_on_cpu(tmp_path, tmp_path_factory):
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({
        "demo_subjects": 4, "demo_slices": 1, "demo_cine_frames": 1, "hidden_size": 16, "mlp_dim": 32,
        "num_layers": 1, "num_heads": 2, "projection_dim": 16, "predictor_hidden": 4, "pretrain_batch_size": 2,
        "pretrain_epochs": 1, "epoch_length": 2, "num_workers": 0, "progress_bar": False,
        "demo_data_dir": str(tmp_path / "demo")}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run_bundle(tmp_path, [str(CONFIGS / "pretrain.json"), str(CONFIGS / "multi_gpu_pretrain.json"),
                                   str(CONFIGS / "cpu_demo.json"), str(tiny)], launcher=launcher)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "models" / "simsiam" / "encoder_final.pt").is_file()


def test_pretrained_switch_gives_a_random_init_encoder_without_an_encoder_file():
    """The experiment runner sets `pretrained` (and `encoder_path` only for a pretrained column): with `pretrained`
    false the classifier starts from random init, whatever `encoder_path` says."""
    assert parser("train.json").get_parsed_content("network_def#encoder") == "/bundle/models/simsiam/encoder_best.pt"
    assert parser("train.json", pretrained=False).get_parsed_content("network_def#encoder") == ""
    # From the command line the switch arrives as text: "false" must switch it off too.
    assert parser("train.json", pretrained="false").get_parsed_content("network_def#encoder") == ""
    assert parser("train.json", pretrained=True, encoder_path="/runs/p/models/simsiam/encoder_best.pt") \
        .get_parsed_content("network_def#encoder") == "/runs/p/models/simsiam/encoder_best.pt"
    assert parser("train.json", "evaluate.json").get_parsed_content("network_def#encoder") == ""  # loads best.pt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_percent_of_the_labels_keeps_one_study_with_every_class(tmp_path, seed):
    """The label fraction draws whole studies: 1 % of the demo's 42 training studies is one study, which has a
    series of each class (tests/test_cardiac_phantom.py), so every class keeps at least one labelled image."""
    classes = ["T1", "T2", "Cine", "Cine", "LGE", "Other"]
    training = [{"image": f"case{s:03d}_{i}.nii.gz", "subject": f"case{s:03d}", "class_index": ["T1", "T2", "Cine",
                 "LGE", "Other"].index(name)} for s in range(42) for i, name in enumerate(classes)]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": training, "validation": [], "test": []}))
    data = {fraction: parser("train.json", "cpu_demo.json", dataset_dir=str(path), label_fraction=fraction,
                             seed=seed).get_parsed_content("train#dataset#data") for fraction in (0.01, 0.1, 1.0)}
    assert [len({d["subject"] for d in data[f]}) for f in (0.01, 0.1, 1.0)] == [1, 4, 42]
    assert {d["label"] for d in data[0.01]} == set(range(5))
    assert {d["image"] for d in data[0.01]} <= {d["image"] for d in data[0.1]}  # nested subsets
