"""A word-level tokenizer built from the training reports (no hub downloads).

Text is lower-cased and split into words, single digits and single punctuation marks (``"EF 39%."`` -> ``["ef", "3",
"9", "%", "."]``): numbers are spelled digit by digit so every value (EF 39 %, 16 mm) is made of ten known tokens
instead of being unknown whenever that exact number was absent from the training reports. The vocabulary is every
token seen at least ``min_count`` times in the training reports, most frequent first (ties alphabetical, so it is
deterministic), after four special tokens: ``[PAD]`` = 0, ``[UNK]`` = 1 (unseen words), ``[CLS]`` = 2 (prepended;
its output is the report embedding), ``[SEP]`` = 3 (appended). Sequences are cut to ``max_length`` (keeping
``[SEP]``) and right-padded with ``[PAD]``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID = range(4)
_TOKEN_PATTERN = re.compile(r"[a-z]+(?:-[a-z]+)*|\d|[^\sa-z\d]")


def split_words(text: str) -> list[str]:
    """Lower-cased words (hyphenated kept whole), single digits and single punctuation marks."""
    return _TOKEN_PATTERN.findall(text.lower())


class WordTokenizer:
    """Maps report text to fixed-length id tensors; see the module docstring for the rules."""

    def __init__(self, vocabulary: Sequence[str], max_length: int = 64):
        if list(vocabulary[:len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise InputError("vocabulary", f"must start with the special tokens {SPECIAL_TOKENS}")
        if int(max_length) < 3:
            raise InputError("max_length", f"expected at least 3 tokens ([CLS], a word, [SEP]), got {max_length}")
        self.vocabulary = list(vocabulary)
        self.index = {token: i for i, token in enumerate(self.vocabulary)}
        self.max_length = int(max_length)

    @classmethod
    def build(cls, reports: Iterable[str], min_count: int = 1, max_length: int = 64) -> "WordTokenizer":
        """Vocabulary from ``reports`` (the training split only, so test wording never leaks in)."""
        counts = Counter(token for report in reports for token in split_words(report))
        if not counts:
            raise InputError("reports", "no words in the training reports; cannot build a vocabulary")
        words = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(list(SPECIAL_TOKENS) + words, max_length)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        """``[CLS] ids... [SEP]`` cut to ``max_length``, unpadded."""
        ids = [self.index.get(token, UNK_ID) for token in split_words(text)][:self.max_length - 2]
        return [CLS_ID] + ids + [SEP_ID]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B, max_length) int64 ids, right-padded with ``PAD_ID``; a single string gives B = 1."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, :len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Tokens joined by spaces, specials dropped (for inspection)."""
        return " ".join(self.vocabulary[i] for i in ids if int(i) >= len(SPECIAL_TOKENS))

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps({"vocabulary": self.vocabulary, "max_length": self.max_length}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        path = Path(path)
        if not path.is_file():
            raise InputError(str(path), "tokenizer file not found; it is written next to the trained model")
        try:
            payload = json.loads(path.read_text())
            return cls(payload["vocabulary"], payload["max_length"])
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(str(path), f"not a tokenizer file (a JSON object with 'vocabulary' and 'max_length'): "
                                        f"{type(error).__name__}: {error}") from error
