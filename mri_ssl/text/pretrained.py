"""A local pretrained Hugging Face text model as the report encoder (optional ``transformers`` extra).

The user gives a directory written by ``save_pretrained`` (``config.json``, the weights as ``model.safetensors`` or
``pytorch_model.bin``, and the tokenizer files). Nothing is ever downloaded: loading uses ``local_files_only=True``,
and ``trust_remote_code=False`` so no Python file inside the directory is imported. ``PretrainedTokenizer`` turns
reports into fixed-length ids like ``WordTokenizer`` does; ``PretrainedTextEncoder`` returns the first-token
(``[CLS]``) output of the model's last layer as the report feature, with padding masked out.

Install with ``pip install 'mri_ssl[text]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mri_ssl.errors import InputError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise InputError("text_model_dir", "a pretrained text model needs the optional 'transformers' package: "
                                           "pip install 'mri_ssl[text]'") from error
    return transformers


def check_model_dir(model_dir: str | os.PathLike, need_weights: bool = True) -> Path:
    """``model_dir`` as a Path, or ``InputError`` naming it when it is missing or not a saved model directory."""
    folder = Path(model_dir).expanduser().resolve()  # absolute: checkpoints record it for later runs
    if not folder.exists():
        raise InputError(str(folder), "text model directory not found (text_model_dir must be a local folder "
                                      "written by save_pretrained; nothing is downloaded)")
    if not folder.is_dir():
        raise InputError(str(folder), "text_model_dir must be a directory written by save_pretrained, not a file")
    if not (folder / "config.json").is_file():
        raise InputError(str(folder), "not a Hugging Face model directory: no config.json")
    if need_weights and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise InputError(str(folder), f"no model weights: expected one of {list(WEIGHT_FILES)}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(str(folder), f"no tokenizer files: expected one of {list(TOKENIZER_FILES)} "
                                      f"(save the tokenizer into the same directory)")
    return folder


class PretrainedTokenizer:
    """Reports -> ``(B, max_length)`` int64 ids with the directory's tokenizer (truncated, right-padded)."""

    def __init__(self, model_dir: str | os.PathLike, max_length: int = 64):
        self.model_dir = check_model_dir(model_dir, need_weights=False)
        if int(max_length) < 3:
            raise InputError("max_length", f"expected at least 3 tokens, got {max_length}")
        try:
            self.tokenizer = _transformers().AutoTokenizer.from_pretrained(
                str(self.model_dir), local_files_only=True, trust_remote_code=False)
        except InputError:
            raise
        except Exception as error:
            raise InputError(str(self.model_dir), f"cannot load its tokenizer ({type(error).__name__}: {error})") \
                from error
        if self.tokenizer.pad_token_id is None:
            raise InputError(str(self.model_dir), "its tokenizer has no padding token; set one and save it again")
        self.max_length, self.pad_id = int(max_length), int(self.tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return encoded["input_ids"].long()


class PretrainedTextEncoder(nn.Module):
    """The directory's model (``AutoModel``); ``forward(ids)`` returns the (B, hidden_size) first-token output.

    Args:
        pretrained_dir: the local model directory.
        pad_token_id: the tokenizer's padding id (positions holding it are masked out).
        max_length: longest id sequence accepted (the tokenizer's ``max_length``).
    """

    def __init__(self, pretrained_dir: str | os.PathLike, pad_token_id: int = 0, max_length: int = 64):
        super().__init__()
        folder = check_model_dir(pretrained_dir)
        try:
            self.model = _transformers().AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                                   trust_remote_code=False)
        except InputError:
            raise
        except Exception as error:
            raise InputError(str(folder), f"cannot load the model ({type(error).__name__}: {error})") from error
        self.width = int(self.model.config.hidden_size)
        self.pad_token_id, self.max_length = int(pad_token_id), int(max_length)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and self.max_length > int(limit):
            raise InputError("max_length", f"{self.max_length} exceeds the model's {limit} positions "
                                           f"({folder}); lower max_length")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.max_length:
            raise InputError("ids", f"expected (B, L <= {self.max_length}) token ids, got {tuple(ids.shape)}")
        mask = (ids != self.pad_token_id).long()
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
