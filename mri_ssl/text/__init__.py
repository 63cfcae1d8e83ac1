"""Report text: a word-level tokenizer built from training reports."""

from mri_ssl.text.tokenizer import WordTokenizer

__all__ = ["WordTokenizer"]
