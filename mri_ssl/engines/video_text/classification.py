"""Disease classification of CMR studies on the video encoder (``configs/classify.json``): the label-efficiency
downstream task of the video-text pretraining.

- ``classifier_video_encoder``: the video encoder of a trained video-text checkpoint, or a new one of the given shape
  drawn from ``seed`` (the from-scratch baseline; the same weights as the video encoder of the untrained video-text
  model that ``build_video_text_model`` draws from that seed);
- ``label_fraction_manifest``: the manifest with its training split cut to a seeded fraction of the studies, drawn
  per disease label (whole studies, at least one of each label, nested across fractions:
  ``mri_ssl.data.splits.select_label_fraction`` within each label);
- ``check_disease_labels``: every study of the named splits has a known disease label, before any video is read;
- ``DiseaseBatch``: the MONAI trainers' ``prepare_batch`` for ``CMRVideoTextDataset`` items (the video as the input,
  the disease label one-hot for the per-class BCE and ``ClassificationReport``).
"""

from __future__ import annotations

import os

import torch

from mri_ssl.data.cardiac.cmr_studies import DISEASE_LABELS
from mri_ssl.data.cardiac.video_dataset import split_studies
from mri_ssl.data.splits import select_label_fraction
from mri_ssl.engines.video_text.model import load_video_text_model
from mri_ssl.errors import InputError
from mri_ssl.networks.video_text import VideoEncoder


def classifier_video_encoder(encoder_path: str | os.PathLike, pretrained: bool, video_config: dict | None = None,
                             seed: int = 0) -> VideoEncoder:
    """The video encoder of the video-text checkpoint ``encoder_path`` (``pretrained``), else a new
    ``VideoEncoder(**video_config)`` with weights drawn from ``seed``."""
    if pretrained:
        return load_video_text_model(encoder_path)[0].video_encoder
    torch.manual_seed(int(seed))
    return VideoEncoder(**dict(video_config or {}))


def label_fraction_manifest(manifest: dict, fraction: float, seed: int = 0) -> dict:
    """A copy of ``manifest`` whose ``training`` split keeps, of each disease label's n training studies,
    ``max(1, round(fraction * n))`` (the seeded, nested draw of ``select_label_fraction`` within the label); the other
    splits are unchanged, and the kept studies stay in their original order.

    Drawn per label because a plain draw of 1 % of 300 studies keeps 3 studies, so at least one of the four labels
    has no positive example and its AUC measures nothing but the untrained head; per label, 1 % keeps one study of
    each (4 studies) and 10 % 32 of 300 (8 of each), and every fraction still lies inside the larger ones."""
    studies = split_studies(manifest, "training")
    chosen = set()
    for label in sorted({str(study.get("label")) for study in studies}):
        of_label = [study for study in studies if str(study.get("label")) == label]
        chosen.update(study["study_id"] for study in select_label_fraction(of_label, fraction, seed=seed,
                                                                           subject_key="study_id"))
    return {**manifest, "training": [study["study_id"] for study in studies if study["study_id"] in chosen]}


def check_disease_labels(manifest: dict, splits) -> None:
    """Raise ``InputError`` naming the first study of ``splits`` whose label is not one of ``DISEASE_LABELS``."""
    for split in splits:
        for study in split_studies(manifest, split):
            if study.get("label") not in DISEASE_LABELS:
                raise InputError(f"study {study.get('study_id')}", f"the {split} split needs a disease label, one "
                                                                   f"of {list(DISEASE_LABELS)}; got "
                                                                   f"{study.get('label')!r}")


class DiseaseBatch:
    """``prepare_batch`` of the classifier's trainer and evaluators: ``(video (B, T, 1, H, W), one-hot label
    (B, num_classes))`` on ``device``."""

    def __init__(self, num_classes: int = len(DISEASE_LABELS)):
        self.num_classes = int(num_classes)

    def __call__(self, batch: dict, device=None, non_blocking: bool = False, **kwargs):
        labels = torch.as_tensor(batch["label"])
        if (labels < 0).any() or (labels >= self.num_classes).any():
            raise InputError("label", f"disease labels must be in 0..{self.num_classes - 1}, got {labels.tolist()}")
        one_hot = torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        return (batch["video"].to(device=device, non_blocking=non_blocking),
                one_hot.to(device=device, non_blocking=non_blocking))
