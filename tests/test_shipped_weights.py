"""`mri-ssl train-shipped-weights`: recipes name real configs, weights are reduced to the inference network's plain
state dict, large_files.yml gets the sha256 (the training runs themselves are what the command does, not tested)."""

import pytest
import torch
import yaml

from bundle_runner import REPO
from mri_ssl.errors import InputError
from mri_ssl.io.hashing import sha256_file
from mri_ssl.trust.shipped_weights import RECIPES, inference_network, network_state, record_large_file
from mri_ssl.trust.verify import read_large_files


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_configs_exist_and_shipped_weights_fit_inference_json(name):
    for step in RECIPES[name].steps:
        assert all((REPO / "bundles" / step.bundle / config).is_file() for config in step.configs)
    shipped = REPO / "bundles" / name / "models" / "model.pt"
    if shipped.is_file():  # strict: the weights fit configs/inference.json as it is
        inference_network(REPO / "bundles" / name).load_state_dict(torch.load(shipped, weights_only=True))
        assert {e["path"]: e["hash_val"] for e in read_large_files(REPO / "bundles" / name)}[
            "models/model.pt"] == sha256_file(shipped)


def test_network_state_keeps_the_prefixed_submodule(tmp_path):
    network = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    torch.save({"network": network.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    state = network_state(tmp_path / "best.pt", "0.")
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], network[0].weight)
    with pytest.raises(InputError, match="no weights under"):
        network_state(tmp_path / "best.pt", "encoder.")


def test_record_large_file_replaces_the_entry_of_the_same_path(tmp_path):
    (tmp_path / "large_files.yml").write_text("large_files: []\n")
    for digest in ("a" * 64, "b" * 64):
        record_large_file(tmp_path, "models/model.pt", digest, "https://example.org/model.pt")
    entries = yaml.safe_load((tmp_path / "large_files.yml").read_text())["large_files"]
    assert entries == [{"path": "models/model.pt", "url": "https://example.org/model.pt", "hash_val": "b" * 64,
                        "hash_type": "sha256"}]
    assert read_large_files(tmp_path) == entries
