"""Load an exported encoder safely and write the features it gives for a set of volumes."""

from __future__ import annotations

import csv
import inspect
import io
import os
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from mri_ssl.atomic import atomic_write_text
from mri_ssl.engines.checkpoint import load_checkpoint
from mri_ssl.errors import InputError
from mri_ssl.networks.encoder import CNNEncoder3D

# What an exported config may hold: the encoder's constructor arguments, and nothing else.
ENCODER_CONFIG_KEYS = frozenset(inspect.signature(CNNEncoder3D).parameters)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> CNNEncoder3D:
    """Rebuild a ``CNNEncoder3D`` from an exported ``{"config", "state_dict"}`` file, in eval mode on ``device``.

    Only the known constructor arguments are accepted from the file (never code), and the file is read with
    ``weights_only=True``.
    """
    payload = load_checkpoint(path, map_location=device)
    if not isinstance(payload, dict) or not {"config", "state_dict"} <= set(payload):
        raise InputError(path, "not an exported encoder: expected a dict with 'config' and 'state_dict'")
    config = dict(payload["config"])
    unknown = set(config) - ENCODER_CONFIG_KEYS
    if unknown:
        raise InputError(path, f"encoder config has unknown keys {sorted(unknown)}")
    encoder = CNNEncoder3D(**config)
    try:
        encoder.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise InputError(path, f"weights do not fit the encoder config {config}: {error}") from error
    return encoder.to(device).eval()


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
    if not rows:
        raise InputError("input_files", "no volumes to encode")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file"] + [f"feature_{i}" for i in range(len(rows[0]) - 1)])
    writer.writerows(rows)
    return atomic_write_text(output_file, buffer.getvalue())
