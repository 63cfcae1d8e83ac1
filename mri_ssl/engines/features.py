"""Write the features an exported encoder gives for a set of volumes, and copy its weights into a network.

(``load_encoder`` itself lives beside ``CNNEncoder3D`` in ``mri_ssl.networks.encoder``.)"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text
from mri_ssl.networks.encoder import load_encoder


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
