"""`mri-ssl fetch-weights`: download the files a bundle's large_files.yml lists, each checked against its sha256."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from mri_ssl.errors import InputError
from mri_ssl.io.hashing import sha256_file
from mri_ssl.trust.files import ARCHIVE_SUFFIXES, download_verified, safe_extract
from mri_ssl.trust.verify import read_large_files


def fetch_weights(bundle_root: str | os.PathLike, timeout_s: float = 60.0, echo=print,
                  progress: bool = True) -> list[Path]:
    """Fetch every large_files.yml entry that is missing or whose local copy fails its hash.

    Each download goes to a temporary file beside its destination and is moved into place only when its sha256
    matches (a mismatch raises ``InputError`` and leaves no file). An entry whose path is an archive (.zip, .tar.gz,
    ...) is then extracted into its folder (or into ``extract_to``) after every member has been checked.
    """
    root = Path(bundle_root).resolve()
    written = []
    for entry in read_large_files(root):
        target = root / entry["path"]
        if target.is_file() and sha256_file(target) == entry["hash_val"].lower():
            echo(f"ok {entry['path']} (sha256 matches, not downloaded again)")
        else:
            with tqdm(desc=entry["path"], unit="B", unit_scale=True, disable=not progress) as bar:
                download_verified(entry["url"], target, entry["hash_val"], timeout_s=timeout_s, progress=bar.update)
            echo(f"fetched {entry['path']} (sha256 {entry['hash_val'][:12]}... verified)")
        written.append(target)
        if target.name.lower().endswith(ARCHIVE_SUFFIXES):
            folder = root / entry.get("extract_to", str(Path(entry["path"]).parent))
            if not folder.resolve().is_relative_to(root):
                raise InputError("extract_to", f"{folder} is outside the bundle")
            extracted = safe_extract(target, folder)
            echo(f"extracted {len(extracted)} files from {entry['path']} into {folder.relative_to(root)}")
            written.extend(extracted)
    return written
