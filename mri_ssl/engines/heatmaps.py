"""Heatmap generation (stage 1 -> stage 2) and CAM overlays for people to look at.

``generate_heatmap_crops`` runs the trained CAM classifier over the image datalist and writes, for each image, five
fixed image crops (PNG, 0..255) and the five matching heatmap crops (``.npy`` float32 in [0, 1], at CAM resolution:
the paper keeps heatmaps at feature-map size to save memory), plus ``crops_datalist.json`` naming them. Heatmaps
are the abnormal-class CAM, min-max normalised with an epsilon, background-suppressed and negative-suppressed
(``mri_ssl.transforms.heatmaps``). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mri_ssl.data.photo.fundus import ABNORMAL_KEY, fundus_entries, is_image_file
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output, atomic_write_text
from mri_ssl.parameters import as_flag
from mri_ssl.transforms.heatmaps import (
    CROP_POSITIONS,
    FOREGROUND_THRESHOLD,
    abnormal_heatmaps,
    five_crops,
    foreground_mask,
    minmax_normalise,
    suppress_background,
    suppress_negative,
)

CROPS_DATALIST = "crops_datalist.json"
PIXEL_SCALE = 255.0  # the preprocessing maps 0..255 to 0..1; images are multiplied back for PNGs and thresholds


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_output(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def _as_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in 0..1 -> (H, W, 3) uint8."""
    return np.clip(np.round(image.detach().cpu().numpy().transpose(1, 2, 0) * PIXEL_SCALE), 0, 255).astype(np.uint8)


@torch.no_grad()
def generate_heatmap_crops(network: torch.nn.Module, datalist: str | os.PathLike, output_dir: str | os.PathLike,
                           transform: Callable, splits: Sequence[str] = ("training", "validation"),
                           device: str | torch.device = "cpu", negative_suppression: bool = True,
                           background_suppression: bool = True, threshold: float = FOREGROUND_THRESHOLD,
                           batch_size: int = 8, progress: bool = True) -> str:
    """Write image and heatmap crops of ``splits`` under ``output_dir``; return the path of ``crops_datalist.json``.

    Args:
        network: a trained ``CAMClassifier``.
        transform: the bundle's preprocessing: a dict with ``image`` -> (3, S, S) in 0..1.
        negative_suppression, background_suppression: the paper's post-processing (both on by default).
        threshold: foreground grey level out of 255 (15 in the paper).
    """
    from monai.data import DataLoader, Dataset

    negative_suppression = as_flag(negative_suppression, "negative_suppression")
    background_suppression = as_flag(background_suppression, "background_suppression")
    output_dir = Path(output_dir)
    device = torch.device(device)
    network = network.to(device).eval()
    crops = {"name": "CAMContrast crops", "kind": "camcontrast_crops", "source": str(Path(datalist).resolve()),
             "negative_suppression": negative_suppression, "background_suppression": background_suppression,
             "foreground_threshold": float(threshold), "labels": {"0": "normal", "1": "abnormal"}}
    for split in splits:
        entries = fundus_entries(datalist, split)
        for index, entry in enumerate(entries):
            if ABNORMAL_KEY not in entry:
                raise InputError(entry["image"], f"the {split} entry has no coarse label {ABNORMAL_KEY!r}")
            entry["name"] = f"{index:05d}_{Path(entry['image']).stem}"  # unique even if two folders share a stem
            entry.setdefault("subject", entry["name"])
        cases = [{key: entry[key] for key in ("image", ABNORMAL_KEY, "name", "subject")} for entry in entries]
        loader = DataLoader(Dataset(cases, transform), batch_size=int(batch_size), shuffle=False, num_workers=0)
        crops[split] = []
        for batch in tqdm(loader, desc=f"heatmaps ({split})", unit="batch", disable=not as_flag(progress)):
            images = torch.as_tensor(batch["image"]).to(device=device, dtype=torch.float32)
            abnormal = torch.as_tensor(batch[ABNORMAL_KEY]).to(device)
            _, cams = network(images, return_cams=True)
            heatmaps = abnormal_heatmaps(cams)
            if background_suppression:
                heatmaps = suppress_background(heatmaps, foreground_mask(images * PIXEL_SCALE, threshold))
            if negative_suppression:
                heatmaps = suppress_negative(heatmaps, abnormal)
            image_crops, heatmap_crops = five_crops(images.cpu()), five_crops(heatmaps.cpu())
            for item, (name, subject) in enumerate(zip(batch["name"], batch["subject"])):
                for position in CROP_POSITIONS:
                    image_path = output_dir / "crops" / f"{name}_{position}.png"
                    heatmap_path = output_dir / "heatmaps" / f"{name}_{position}.npy"
                    _save_png(_as_uint8_hwc(image_crops[position][item]), image_path)
                    _save_npy(heatmap_crops[position][item, 0].numpy().astype(np.float32), heatmap_path)
                    crops[split].append({"image": os.path.relpath(image_path, output_dir),
                                         "heatmap": os.path.relpath(heatmap_path, output_dir),
                                         ABNORMAL_KEY: int(batch[ABNORMAL_KEY][item]), "position": position,
                                         "subject": str(subject)})
    crops["numTraining"] = len(crops.get("training", []))
    return str(atomic_write_text(output_dir / CROPS_DATALIST, json.dumps(crops, indent=1)))


def overlay(image_hwc: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (H, W) over an RGB uint8 image (H, W, 3) with matplotlib's ``jet`` colours."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image_hwc.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def overlay_inputs(input_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None,
                   split: str = "test") -> list[dict]:
    """Every image file of ``input_dir`` (sorted), or with none given the ``split`` images of ``datalist``."""
    if input_dir not in (None, ""):
        folder = Path(input_dir)
        if not folder.is_dir():
            raise InputError(folder, "input folder not found")
        files = sorted(path for path in folder.iterdir() if is_image_file(path))
        if not files:
            raise InputError(folder, "no PNG / JPEG / TIFF / BMP images in the input folder")
        return [{"image": str(path)} for path in files]
    if datalist in (None, ""):
        raise InputError("input_dir", "give a folder of images (input_dir) or a datalist")
    return [{"image": entry["image"]} for entry in fundus_entries(datalist, split)]


def _overlay_row(image: torch.Tensor, logits: torch.Tensor, cams: torch.Tensor, source: str,
                 output_dir: Path) -> dict:
    """Write ``<stem>_cam.png`` for one preprocessed image (3, H, W) and its logits (C,) / CAMs (C, h, w)."""
    cam = F.interpolate(torch.as_tensor(cams).float()[None, 1:2], size=image.shape[-2:], mode="bilinear",
                        align_corners=False)
    heatmap = minmax_normalise(cam)[0, 0].cpu().numpy()
    path = output_dir / f"{Path(source).stem}_cam.png"
    _save_png(overlay(_as_uint8_hwc(image), heatmap), path)
    probability = float(torch.softmax(torch.as_tensor(logits).float().reshape(-1), dim=0)[1])
    return {"image": source, "p_abnormal": f"{probability:.6f}", "overlay": str(path)}


def _write_predictions(rows: list[dict], output_dir: Path) -> str:
    if not rows:
        raise InputError("inputs", "no images to run on")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return str(atomic_write_text(output_dir / "predictions.csv", text.getvalue()))


class CAMOverlayWriter:
    """Handler of a MONAI evaluator whose ``pred`` is ``CAMInferer``'s ``{"logits", "cams"}`` (decollated): for
    each case ``<stem>_cam.png`` (abnormal CAM, upsampled bilinearly and min-max normalised, over the preprocessed
    image) in ``output_dir``, and when the evaluator completes ``predictions.csv`` with the abnormal probabilities
    (its path in ``self.csv_path``). The source file is read from the case's ``image_path``."""

    def __init__(self, output_dir: str | os.PathLike, image_key: str = "image", pred_key: str = "pred"):
        self.output_dir = Path(output_dir)
        self.image_key, self.pred_key = image_key, pred_key
        self.rows: list[dict] = []
        self.csv_path = ""

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine=None) -> None:
        self.rows = []

    def collect(self, engine) -> None:
        for case, result in zip(engine.state.batch, engine.state.output):
            prediction = result[self.pred_key]
            source = str(case.get(f"{self.image_key}_path", f"image_{len(self.rows):05d}"))
            self.rows.append(_overlay_row(torch.as_tensor(case[self.image_key]), prediction["logits"],
                                          prediction["cams"], source, self.output_dir))

    def write(self, engine=None) -> None:
        self.csv_path = _write_predictions(self.rows, self.output_dir)


@torch.no_grad()
def write_cam_overlays(network: torch.nn.Module, inputs: Sequence[dict], output_dir: str | os.PathLike,
                       transform: Callable, device: str | torch.device = "cpu", progress: bool = True) -> str:
    """For each input image: ``<stem>_cam.png`` (abnormal CAM, upsampled bilinearly and min-max normalised, over
    the image) in ``output_dir``, and ``predictions.csv`` with the abnormal probability. Returns the CSV path.
    (The bundle's inference.json does the same with a MONAI evaluator and ``CAMOverlayWriter``.)"""
    device = torch.device(device)
    network = network.to(device).eval()
    output_dir = Path(output_dir)
    rows = []
    for entry in tqdm(inputs, desc="CAM overlays", unit="image", disable=not as_flag(progress)):
        image = torch.as_tensor(transform(dict(entry))["image"]).to(device=device, dtype=torch.float32)[None]
        logits, cams = network(image, return_cams=True)
        rows.append(_overlay_row(image[0], logits[0], cams[0], str(entry["image"]), output_dir))
    return _write_predictions(rows, output_dir)
