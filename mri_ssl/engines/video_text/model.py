"""The video-text model as the engines use it: built from a seed, rebuilt from a checkpoint, run over a dataset."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from mri_ssl.errors import InputError
from mri_ssl.io.weights import load_checkpoint, load_network_weights
from mri_ssl.networks.video_text import VideoTextModel
from mri_ssl.text.tokenizer_state import tokenizer_from_state, tokenizer_state


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if hasattr(model, "module") else model


def build_video_text_model(tokenizer, embed_dim: int = 512, video_config: dict | None = None,
                           text_config: dict | None = None, seed: int = 0) -> VideoTextModel:
    """The model with weights drawn from ``seed`` (the untrained zero-shot reference uses the same seed).

    ``tokenizer`` is a ``WordTokenizer`` (text transformer trained from scratch) or a ``PretrainedTokenizer``
    (``text_config["pretrained_dir"]``: a local Hugging Face model directory, see ``mri_ssl.text.pretrained``).
    """
    torch.manual_seed(int(seed))
    text_config = {**(text_config or {}), "max_length": tokenizer.max_length}
    if text_config.get("pretrained_dir"):
        text_config["pad_token_id"] = tokenizer.pad_id
    return VideoTextModel(len(tokenizer), embed_dim, dict(video_config or {}), text_config)


def checkpoint_extras(tokenizer, model_config: dict) -> dict:
    """What ``AtomicCheckpointer`` adds to every checkpoint so ``load_video_text_model`` can rebuild the model."""
    return {"config": dict(model_config), **tokenizer_state(tokenizer)}


def load_video_text_model(path: str | os.PathLike, device="cpu") -> tuple[VideoTextModel, object]:
    """Rebuild the model and tokenizer from a trainer checkpoint (``weights_only`` loading; the weights from the
    ``.safetensors`` twin when present)."""
    payload = load_checkpoint(path, map_location=device)
    has_weights = isinstance(payload, dict) and ("network" in payload or "state_dict" in payload)
    if not has_weights or "config" not in payload:
        raise InputError(str(path), "not a video-text checkpoint (missing its network, config or tokenizer)")
    tokenizer = tokenizer_from_state(payload, path)
    model = build_video_text_model(tokenizer, **payload["config"])
    state = load_network_weights(path, device) if "network" in payload else payload["state_dict"]
    model.load_state_dict(state)
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def embed_dataset(model: VideoTextModel, dataset, device, batch_size: int = 16,
                  inferer=None) -> dict[str, np.ndarray]:
    """Video embeddings, text embeddings, frozen video-encoder features and labels of every item (the video encoder
    runs through ``inferer``, a MONAI inferer, when given)."""
    model.eval()
    out = {"video": [], "text": [], "features": [], "label": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        video = batch["video"].to(device)
        features = inferer(video, model.video_encoder) if inferer is not None else model.video_encoder(video)
        out["features"].append(features.cpu())
        out["video"].append(torch.nn.functional.normalize(model.video_projection(features), dim=1).cpu())
        out["text"].append(model.embed_text(batch["ids"].to(device)).cpu())
        out["label"].append(torch.as_tensor(batch["label"]))
    return {k: torch.cat(v).numpy() for k, v in out.items()}
