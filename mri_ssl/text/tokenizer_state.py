"""The report tokenizer of the video-text model: chosen for a run, saved as plain data, restored from a file.

Either a ``WordTokenizer`` built from the training reports or a ``PretrainedTokenizer`` of a local Hugging Face model
directory (``mri_ssl.text.pretrained``); checkpoints carry it as plain data (``tokenizer_state``), so loading needs
no pickle (``weights_only=True``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mri_ssl.errors import InputError
from mri_ssl.io.weights import load_checkpoint
from mri_ssl.text.pretrained import PretrainedTokenizer
from mri_ssl.text.tokenizer import WordTokenizer


def build_text_tokenizer(training_reports, max_length: int = 64, text_model_dir: str | os.PathLike | None = None):
    """The report tokenizer: built from the training reports, or the local pretrained model's own when
    ``text_model_dir`` is given (then ``training_reports`` are not used)."""
    if text_model_dir:
        return PretrainedTokenizer(text_model_dir, max_length)
    return WordTokenizer.build(training_reports, max_length=max_length)


def tokenizer_state(tokenizer) -> dict:
    """Plain data that rebuilds ``tokenizer`` (a word vocabulary, or the local pretrained model directory)."""
    if isinstance(tokenizer, WordTokenizer):
        return {"vocabulary": tokenizer.vocabulary, "max_length": tokenizer.max_length}
    return {"text_model_dir": str(tokenizer.model_dir), "max_length": tokenizer.max_length}


def load_tokenizer(path: str | os.PathLike):
    """The word tokenizer saved by ``WordTokenizer.save`` (a ``.json`` file, e.g. the ``models/tokenizer.json`` a
    bundle ships beside its plain state dict: the vocabulary fixes the text embedding's size), or the tokenizer a
    trainer checkpoint carries."""
    path = Path(path)
    if path.suffix == ".json":
        return WordTokenizer.load(path)
    payload = load_checkpoint(path)
    if not isinstance(payload, dict):
        raise InputError(path, "not a video-text checkpoint (no tokenizer in it)")
    return tokenizer_from_state(payload, path)


def tokenizer_from_state(payload: dict, source="checkpoint"):
    """The tokenizer ``tokenizer_state`` saved into ``payload``; ``InputError`` naming ``source`` when it is missing."""
    if payload.get("text_model_dir"):
        return PretrainedTokenizer(payload["text_model_dir"], payload["max_length"])
    missing = [k for k in ("vocabulary", "max_length") if k not in payload]
    if missing:
        raise InputError(str(source), f"not a video-text checkpoint (missing {missing})")
    return WordTokenizer(payload["vocabulary"], payload["max_length"])
