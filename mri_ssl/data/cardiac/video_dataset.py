"""CMR studies as (video, report) pairs for video-text training, from a manifest of
``mri_ssl.data.cardiac.cmr_studies``.

A study's video is the frames of its selected series concatenated in ``SERIES_LAYOUT`` order (cine short axis,
cine long axis, LGE short-axis slices, LGE long axis, as the paper stacks CINE_lax-sax + LGE), each series scaled by
its own 99.5th percentile to about [0, 1] and resized to ``image_size``. ``num_frames`` frames are then taken by
segment sampling (``mri_ssl.transforms.frames``): random per segment in training, middle in evaluation.

Optional training-time augmentation (regularisation for small data; both off by default, as in the paper):
``frame_augment`` applies one random affine (shift up to 4 px, scale and rotation up to 10 %/10 degrees; no flip,
which would swap the wall territories a report names), contrast (gamma 0.7-1.5) and intensity scale (+-10 %) to all
frames of a study; ``text_augment`` shuffles the order of the report's sentences (each states one finding, so the
facts stay). Both draw from the dataset's ``rng``, which the trainer reseeds every epoch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandScaleIntensity
from torch.utils.data import Dataset

from mri_ssl.data.cardiac.cmr_studies import DISEASE_LABELS, SERIES_LAYOUT
from mri_ssl.errors import InputError
from mri_ssl.parameters import as_flag
from mri_ssl.text.tokenizer import WordTokenizer
from mri_ssl.transforms.frames import segment_frame_indices

SERIES_TYPES = ("cine", "lge")


def split_studies(manifest: dict, split: str) -> list[dict]:
    """The manifest's studies of ``split`` (training / validation / test), in manifest order."""
    if split not in manifest:
        raise InputError("split", f"the manifest has no {split!r} split; it has "
                                  f"{[k for k in ('training', 'validation', 'test') if k in manifest]}")
    members = set(manifest[split])
    return [study for study in manifest["studies"] if study["study_id"] in members]


def training_reports(manifest: dict) -> list[str]:
    """Report texts of the training split (the tokenizer's vocabulary comes from these only)."""
    return [study["report"] for study in split_studies(manifest, "training")]


def shuffle_sentences(report: str, rng: np.random.RandomState) -> str:
    """The report with its sentences in a random order (sentences end at '.', '!' or '?' followed by a space)."""
    sentences = [part for part in re.split(r"(?<=[.!?])\s+", report.strip()) if part]
    return " ".join(sentences[i] for i in rng.permutation(len(sentences)))


def frame_augmentation() -> Compose:
    """The random affine, contrast and intensity change applied alike to all frames (T, H, W) of one study."""
    return Compose([
        RandAffine(prob=0.8, translate_range=(4, 4), scale_range=(0.1, 0.1), rotate_range=0.17, padding_mode="zeros"),
        RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
        RandScaleIntensity(factors=0.1, prob=0.5),
    ])


def load_study_frames(root: str | os.PathLike, study: dict, series_types=SERIES_TYPES, image_size: int = 84
                      ) -> torch.Tensor:
    """(T, H, W) float32 frames of the study's series of ``series_types``, in ``SERIES_LAYOUT`` order."""
    bad = [t for t in series_types if t not in SERIES_TYPES]
    if bad or not series_types:
        raise InputError("series_types", f"expected a non-empty subset of {SERIES_TYPES}, got {list(series_types)}")
    order = {key: i for i, key in enumerate(SERIES_LAYOUT)}
    chosen = sorted((s for s in study["series"] if s["type"] in series_types),
                    key=lambda s: order.get((s["type"], s["view"]), len(order)))
    if not chosen:
        raise InputError(study.get("study_id", "study"), f"no series of type {list(series_types)}")
    parts = []
    for series in chosen:
        path = Path(root) / series["file"]
        data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim != 3 or not np.all(np.isfinite(data)):
            raise InputError(str(path), f"expected finite (H, W, frames) data, got shape {data.shape}")
        frames = torch.from_numpy(np.moveaxis(data, -1, 0).copy())
        scale = float(torch.quantile(frames.flatten()[::max(1, frames.numel() // 100000)], 0.995))
        frames = (frames / (scale if scale > 0 else 1.0)).clamp(0.0, 1.5)
        if frames.shape[-2:] != (image_size, image_size):
            frames = F.interpolate(frames[:, None], size=(image_size, image_size), mode="area")[:, 0]
        parts.append(frames)
    return torch.cat(parts)


class CMRVideoTextDataset(Dataset):
    """(video, report ids, label) items of one split; videos are loaded once and kept in memory.

    Items: ``{"video": (num_frames, 1, H, W), "ids": (max_length,), "label": int (index in DISEASE_LABELS, -1 if
    unknown), "study_id": str, "report": str}``.
    """

    def __init__(self, manifest: dict, split: str, tokenizer: WordTokenizer, num_frames: int = 8,
                 mode: str = "train", series_types=SERIES_TYPES, image_size: int = 84, seed: int = 0,
                 frame_augment: bool = False, text_augment: bool = False):
        self.studies = split_studies(manifest, split)
        if not self.studies:
            raise InputError("split", f"the {split!r} split has no studies")
        segment_frame_indices(1, num_frames, "eval")  # validates num_frames early
        self.tokenizer, self.num_frames, self.mode = tokenizer, int(num_frames), mode
        self.rng = np.random.RandomState(int(seed))
        training = mode == "train"
        self.augment = frame_augmentation().set_random_state(state=self.rng) if frame_augment and training else None
        self.text_augment = as_flag(text_augment, "text_augment") and training
        self.videos = [load_study_frames(manifest["root"], s, tuple(series_types), int(image_size))
                       for s in self.studies]
        self.ids = tokenizer([s["report"] for s in self.studies])
        self.labels = [DISEASE_LABELS.index(s["label"]) if s.get("label") in DISEASE_LABELS else -1
                       for s in self.studies]

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> dict:
        frames = self.videos[index]
        picks = segment_frame_indices(frames.shape[0], self.num_frames, self.mode,
                                      self.rng if self.mode == "train" else None)
        video = frames[torch.as_tensor(picks)]
        if self.augment is not None:
            video = torch.as_tensor(self.augment(video)).float()  # one draw for all frames (frames as channels)
        ids = self.ids[index]
        if self.text_augment:
            ids = self.tokenizer([shuffle_sentences(self.studies[index]["report"], self.rng)])[0]
        return {"video": video[:, None], "ids": ids,
                "label": self.labels[index], "study_id": self.studies[index]["study_id"],
                "report": self.studies[index]["report"]}
