"""File hashes: the sha256 that data checks (duplicate files) and bundle trust (downloads, packed bundles) compare."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20  # read 1 MiB at a time, so memory stays bounded whatever the file size


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
