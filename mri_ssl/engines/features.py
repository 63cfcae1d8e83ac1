"""Load an exported encoder safely and write the features it gives for a set of volumes."""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from mri_ssl.engines.checkpoint import consistent_twin, load_checkpoint, load_safetensors
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text
from mri_ssl.networks.encoder import CNNEncoder3D

# What an exported config may hold: the encoder's constructor arguments, and nothing else.
ENCODER_CONFIG_KEYS = frozenset(inspect.signature(CNNEncoder3D).parameters)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> CNNEncoder3D:
    """Rebuild a ``CNNEncoder3D`` from an exported ``{"config", "state_dict"}`` file, in eval mode on ``device``.

    Only the known constructor arguments are accepted from the file (never code). The ``.safetensors`` twin written
    by ``export_encoder`` is read when present; otherwise the file is read with ``weights_only=True``.
    """
    return load_exported_module(path, CNNEncoder3D, ENCODER_CONFIG_KEYS, device,
                                "encoder config has unknown keys").eval()


def load_exported_module(path: str | os.PathLike, module_class: type[torch.nn.Module], config_keys,
                         device: str | torch.device = "cpu",
                         unknown_keys_message: str = "config has unknown keys") -> torch.nn.Module:
    """Rebuild ``module_class(**config)`` from an exported ``{"config", "state_dict"}`` file on ``device``.

    The config may hold only ``config_keys`` (constructor arguments, never code); the ``.safetensors`` twin is read
    when present and from the same save as the file (``consistent_twin``), otherwise the file with
    ``weights_only=True``. Shared by the CNN and ViT encoder loaders.
    """
    twin = consistent_twin(path, device)
    if twin is not None:  # released weights: tensors + JSON config, no pickle at all
        state_dict, metadata = load_safetensors(twin, device)
        try:
            payload = {"config": json.loads(metadata["config"]), "state_dict": state_dict}
        except (KeyError, ValueError) as error:
            raise InputError(twin, "no JSON 'config' in the safetensors metadata") from error
    else:
        payload = load_checkpoint(path, map_location=device)
    if not isinstance(payload, dict) or not {"config", "state_dict"} <= set(payload):
        raise InputError(path, "not an exported encoder: expected a dict with 'config' and 'state_dict'")
    config = dict(payload["config"])
    unknown = set(config) - set(config_keys)
    if unknown:
        raise InputError(path, f"{unknown_keys_message} {sorted(unknown)}")
    module = module_class(**config)
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise InputError(path, f"weights do not fit the encoder config {config}: {error}") from error
    return module.to(device)


@torch.no_grad()
def write_features(encoder: torch.nn.Module, dataset: Iterable[dict], output_file: str | os.PathLike,
                   device: str | torch.device = "cpu", image_key: str = "image", progress: bool = True) -> Path:
    """Write one CSV row per volume: its file name and the encoder's pooled feature vector.

    Each dataset item holds ``image_key`` as a channel-first tensor ``(1, *spatial)`` whose sizes are multiples of
    the encoder's downsampling factor (``DivisiblePadd`` in the bundle does that); the whole volume is encoded at once
    and global-average pooled, so any size works.
    """
    encoder = encoder.to(device).eval()
    rows = []
    items = list(dataset)
    for item in tqdm(items, desc="encoding", unit="volume", disable=not progress):
        image = torch.as_tensor(item[image_key]).float()[None].to(device)
        feature = encoder(image)[0].cpu().tolist()
        source = getattr(item[image_key], "meta", {}).get("filename_or_obj", "")
        rows.append([str(source)] + [f"{value:.6g}" for value in feature])
    return write_feature_rows(rows, output_file)


def write_feature_rows(rows: list[list[str]], output_file: str | os.PathLike) -> Path:
    """CSV with a header ``file, feature_0, ...`` and one row per volume, written atomically."""
    if not rows:
        raise InputError("input_files", "no volumes to encode")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file"] + [f"feature_{i}" for i in range(len(rows[0]) - 1)])
    writer.writerows(rows)
    return atomic_write_text(output_file, buffer.getvalue())


def load_encoder_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Copy the weights of an exported encoder file into ``network`` (a ``CNNEncoder3D`` built from the config);
    ``InputError`` naming the file if the shapes differ."""
    exported = load_encoder(path, "cpu")
    try:
        network.load_state_dict(exported.state_dict())
    except RuntimeError as error:
        raise InputError(path, f"the encoder was exported with config {exported.config()}, which does not fit the "
                               f"network_def of this config (set features / dropout to match): {error}") from error
    return network


class FeatureWriter:
    """Evaluator handler: collect each volume's ``pred`` (the pooled encoder feature) and write the CSV of
    :func:`write_features` when the run completes. Use with a ``SupervisedEvaluator`` whose network is the encoder.
    """

    def __init__(self, output_file: str | os.PathLike, image_key: str = "image", pred_key: str = "pred"):
        self.output_file = Path(output_file)
        self.image_key = image_key
        self.pred_key = pred_key
        self.rows: list[list[str]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in outputs:
            feature = torch.as_tensor(item[self.pred_key]).detach().float().reshape(-1).cpu().tolist()
            source = getattr(item.get(self.image_key), "meta", {}).get("filename_or_obj", "")
            self.rows.append([str(source)] + [f"{value:.6g}" for value in feature])

    def write(self, engine) -> None:
        write_feature_rows(self.rows, self.output_file)
        print("wrote", self.output_file)
