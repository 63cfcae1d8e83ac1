"""Hashes, hash-checked downloads and archive extraction that refuses to write outside its folder.

MONAI checks a download's hash only when one is given and never checks a bundle archive; here every download has a
sha256, goes to a temporary file beside its destination, and is moved into place only when the hash matches (a
mismatch leaves no file behind). Archives are extracted only after every member has been checked: no absolute paths,
no ``..``, no symbolic or hard links, no device files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from mri_ssl.atomic import atomic_output
from mri_ssl.errors import InputError

CHUNK_BYTES = 1 << 20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def download_verified(url: str, destination: str | os.PathLike, sha256: str, timeout_s: float = 60.0,
                      progress: Callable[[int], None] | None = None) -> Path:
    """Download ``url`` (http, https or file) to ``destination`` only if its sha256 equals ``sha256``.

    The bytes go to a temporary file in the destination folder and are hashed as they arrive; on a mismatch or any
    error the temporary file is removed and ``destination`` is left as it was (absent, or its previous content).
    """
    if not is_sha256(sha256):
        raise InputError("hash_val", f"expected a 64-hex-digit sha256 for {url}, got {sha256!r}")
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https", "file"):
        raise InputError(url, "only http, https and file URLs are fetched")
    destination = Path(destination)
    digest = hashlib.sha256()
    with atomic_output(destination) as temporary:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(temporary, "wb") as out:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except OSError as error:  # URLError, HTTPError, timeouts, missing file:// paths
            raise InputError(url, f"download failed ({error})") from error
        if digest.hexdigest() != sha256.lower():
            raise InputError(url, f"sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()}; the "
                                  f"download was discarded and {destination} was not written")
    return destination


def _member_problem(name: str) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "'..' in the path"
    return None


def check_archive(archive: str | os.PathLike) -> list[str]:
    """Member names of a zip or tar archive, after refusing absolute paths, ``..``, links and special files."""
    archive = Path(archive)
    names = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            for info in handle.infolist():
                problem = _member_problem(info.filename)
                mode = info.external_attr >> 16
                if problem is None and mode and (mode & 0o170000) not in (0o100000, 0o040000, 0):
                    problem = "a symbolic link or special file"
                if problem:
                    raise InputError(archive, f"refused member {info.filename!r}: {problem}")
                names.append(info.filename)
        return names
    try:
        with tarfile.open(archive) as handle:
            for member in handle.getmembers():
                problem = _member_problem(member.name)
                if problem is None and not (member.isfile() or member.isdir()):
                    problem = "a link or special file"
                if problem:
                    raise InputError(archive, f"refused member {member.name!r}: {problem}")
                names.append(member.name)
    except tarfile.TarError as error:
        raise InputError(archive, f"not a readable zip or tar archive ({error})") from error
    return names


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike) -> list[Path]:
    """Extract ``archive`` into ``destination`` after :func:`check_archive`; returns the files written.

    Everything is extracted into a temporary folder beside ``destination`` first and moved in at the end, so a
    failure leaves no half-extracted tree.
    """
    archive, destination = Path(archive), Path(destination)
    check_archive(archive)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=destination))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(staging)
        else:
            with tarfile.open(archive) as handle:
                # Members were checked above; the "data" filter (Python >= 3.10.12 / 3.11.4) is a second guard.
                if hasattr(tarfile, "data_filter"):
                    handle.extractall(staging, filter="data")
                else:
                    handle.extractall(staging)
        written = []
        for source in sorted(staging.rglob("*")):
            if source.is_file():
                target = destination / source.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                written.append(target)
        return written
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
