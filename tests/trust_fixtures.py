"""A tiny but complete bundle for the bundle-trust tests: a 3-D conv net trained on random tensors in a second.

Every check of `verify-bundle` passes on it; each test breaks one thing. Data come from `$torch.rand` expressions,
so the workflows read no files and take well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

METADATA = {
    "schema": ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
               "meta_schema_20240725.json"),
    "version": "0.1.0",
    "changelog": {"0.1.0": "first release"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.13.0",
    "numpy_version": "2.4.6",
    "required_packages_version": {"mri_ssl": "0.1.0"},
    "task": "toy voxel regression",
    "description": "a 3x3x3 convolution fitted to random volumes",
    "authors": "mri_ssl developers",
    "copyright": "Copyright (c) mri_ssl developers",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                             "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [0, 1],
                             "is_patch_data": False, "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "magnitude", "num_channels": 2,
                             "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [],
                             "is_patch_data": False, "channel_def": {"0": "a", "1": "b"}}},
    },
}

TRAIN = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "dataset_dir": "",
    "ckpt_dir": "$@bundle_root + '/models'",
    "device": "$torch.device('cpu')",
    "num_epochs": 2,
    "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 3,
                    "padding": 1},
    "network": "$@network_def.to(@device)",
    "data": "$[{'image': torch.rand(1, 8, 8, 8), 'label': torch.rand(2, 8, 8, 8)} for _ in range(4)]",
    "train": {
        "preprocessing": {"_target_": "Compose", "transforms": []},
        "dataset": {"_target_": "Dataset", "data": "@data", "transform": "@train#preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2},
        "inferer": {"_target_": "SimpleInferer"},
        "trainer": {
            "_target_": "SupervisedTrainer",
            "device": "@device",
            "max_epochs": "@num_epochs",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": 0.01},
            "loss_function": {"_target_": "torch.nn.MSELoss"},
            "inferer": "@train#inferer",
        },
    },
    "initialize": ["$torch.manual_seed(0)"],
    "run": ["$@train#trainer.run()"],
}

INFERENCE = {
    "imports": ["$import torch", "$import os"],
    "bundle_root": ".",
    "dataset_dir": "",
    "device": "$torch.device('cpu')",
    "network_def": TRAIN["network_def"],
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": []},
    "dataset": {"_target_": "Dataset", "data": "$[{'image': torch.rand(1, 8, 8, 8)}]",
                "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1},
    "inferer": {"_target_": "SimpleInferer"},
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer"},
    "run": ["$@evaluator.run()"],
}


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return path


def tiny_weights() -> bytes:
    """models/model.pt of the tiny bundle: a plain state dict of its network_def, as the model zoo expects."""
    import io

    import torch

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torch.nn.Conv3d(1, 2, kernel_size=3, padding=1).state_dict(), buffer)
    return buffer.getvalue()


def make_tiny_bundle(root: Path, **replace) -> Path:
    """Write the tiny bundle to ``root``; ``replace`` maps a relative file name to new content (None removes it)."""
    files = {
        "LICENSE": "Apache-2.0\n",
        "docs/README.md": "# tiny\n\n`python -m monai.bundle run --config_file configs/train.json`\n",
        "large_files.yml": "large_files: []\n",
        "configs/metadata.json": METADATA,
        "configs/train.json": TRAIN,
        "configs/inference.json": INFERENCE,
        "configs/cpu_demo.json": {"num_epochs": 1},
        "configs/verify_bundle.json": {"overrides": {}},
        "models/model.pt": tiny_weights(),
    }
    files.update(replace)
    for name, content in files.items():
        if content is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            write_json(path, content)
    return root
