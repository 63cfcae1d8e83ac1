"""Hashes, hash-checked downloads and archive extraction that refuses to write outside its folder.

MONAI checks a download's hash only when one is given and never checks a bundle archive; here every download has a
sha256, goes to a temporary file beside its destination, and is moved into place only when the hash matches (a
mismatch leaves no file behind). Archives are extracted only after every member has been checked: no absolute paths,
no ``..``, no symbolic or hard links, no device files. Members are then streamed to disk in chunks and hashed on the
way, within limits on each member's size, the total size and the compression ratio (``ExtractLimits``), so a
decompression bomb is refused before it fills memory or disk.
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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output
from mri_ssl.io.hashing import CHUNK_BYTES

MIB = 1 << 20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


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


@dataclass(frozen=True)
class ExtractLimits:
    """How much an archive may unpack to; a member that would cross a limit is refused before the bytes are written.

    Attributes:
        member_bytes: largest uncompressed size of one member.
        total_bytes: largest uncompressed size of all members together.
        ratio: largest uncompressed / compressed size, of a zip member or of a whole tar archive (a zip bomb is
            thousands to one; text compresses about ten to one).
        ratio_floor_bytes: the ratio is checked only past this many bytes, so small, very regular files pass.
    """

    member_bytes: int = 256 * MIB
    total_bytes: int = 1024 * MIB
    ratio: float = 100.0
    ratio_floor_bytes: int = 1 * MIB


# Packed bundles hold configs, docs and small data (weights are fetched separately): tighter limits.
BUNDLE_LIMITS = ExtractLimits(member_bytes=64 * MIB, total_bytes=256 * MIB)
# Weights archives named in large_files.yml are hash-checked downloads of a known size, but still bounded.
WEIGHTS_LIMITS = ExtractLimits(member_bytes=16 * 1024 * MIB, total_bytes=32 * 1024 * MIB)


class _Budget:
    """Counts the bytes an extraction has written and refuses the chunk that would cross a limit."""

    def __init__(self, archive: Path, limits: ExtractLimits):
        self.archive, self.limits, self.total = archive, limits, 0
        self.archive_bytes = archive.stat().st_size

    def refuse(self, name: str, problem: str) -> InputError:
        return InputError(self.archive, f"refused member {name!r}: {problem}; nothing was extracted")

    def check_declared(self, name: str, size: int) -> None:
        """Refuse before reading when the size the archive declares is already over a limit."""
        if size > self.limits.member_bytes:
            raise self.refuse(name, f"declares {size} bytes, more than the {self.limits.member_bytes}-byte limit "
                                    f"per member")

    def _over_ratio(self, unpacked: int, compressed: int) -> bool:
        return unpacked > self.limits.ratio_floor_bytes and unpacked > self.limits.ratio * max(compressed, 1)

    def take(self, name: str, member_bytes: int, chunk_bytes: int, member_compressed: int | None) -> None:
        """Account for a chunk about to be written: ``member_bytes`` of the member are written already, and it is
        ``member_compressed`` bytes in the archive (a zip member; None in a tar, compressed as one stream)."""
        after, total, limits = member_bytes + chunk_bytes, self.total + chunk_bytes, self.limits
        if after > limits.member_bytes:
            raise self.refuse(name, f"unpacks to more than the {limits.member_bytes}-byte limit per member")
        if total > limits.total_bytes:
            raise self.refuse(name, f"the archive unpacks to more than its {limits.total_bytes}-byte limit")
        if member_compressed is not None and self._over_ratio(after, member_compressed):
            raise self.refuse(name, f"compression ratio over {limits.ratio:g}:1 ({after} bytes from "
                                    f"{member_compressed} compressed): a decompression bomb")
        if self._over_ratio(total, self.archive_bytes):
            raise self.refuse(name, f"compression ratio over {limits.ratio:g}:1 ({total} bytes from an archive of "
                                    f"{self.archive_bytes}): a decompression bomb")
        self.total = total


def _stream_member(source: BinaryIO, target: Path, name: str, budget: _Budget,
                   member_compressed: int | None) -> str:
    """Copy ``source`` to ``target`` in chunks, within ``budget``; return its sha256. Written to a temporary name
    first, so a refused or failed member never appears under its own name."""
    digest, written = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as temporary, open(temporary, "wb") as out:
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            budget.take(name, written, len(chunk), member_compressed)
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    return digest.hexdigest()


def _extract_members(archive: Path, staging: Path, limits: ExtractLimits) -> Iterator[tuple[str, Path, str]]:
    """Stream every file member of ``archive`` into ``staging``; yield (member name, path, sha256) as each ends."""
    budget = _Budget(archive, limits)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            for info in handle.infolist():
                if info.is_dir():
                    (staging / info.filename).mkdir(parents=True, exist_ok=True)
                    continue
                budget.check_declared(info.filename, info.file_size)
                with handle.open(info) as source:
                    path = staging / info.filename
                    yield info.filename, path, _stream_member(source, path, info.filename, budget,
                                                              info.compress_size)
        return
    with tarfile.open(archive) as handle:
        for member in handle:
            if member.isdir():
                (staging / member.name).mkdir(parents=True, exist_ok=True)
                continue
            budget.check_declared(member.name, member.size)
            path = staging / member.name
            yield member.name, path, _stream_member(handle.extractfile(member), path, member.name, budget, None)


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike,
                 limits: ExtractLimits = WEIGHTS_LIMITS, expected_sha256: dict[str, str] | None = None) -> list[Path]:
    """Extract ``archive`` into ``destination`` after :func:`check_archive`; returns the files written.

    Members are streamed in 1 MiB chunks (memory stays bounded whatever they hold) into a temporary folder beside
    ``destination``, within ``limits`` (per member, in total, compression ratio), and hashed on the way; with
    ``expected_sha256`` (member name -> hex digest) every listed member must match. Only when every member has
    passed are the files moved in, so a refusal or failure leaves ``destination`` as it was.
    """
    archive, destination = Path(archive), Path(destination)
    check_archive(archive)
    created = not destination.exists()
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=destination))
    moved = False
    try:
        for name, _, digest in _extract_members(archive, staging, limits):
            expected = (expected_sha256 or {}).get(name)
            if expected is not None and digest != str(expected).lower():
                raise InputError(archive, f"{name}: sha256 {digest} does not match the manifest {expected}; "
                                          f"nothing was extracted")
        written = []
        for source in sorted(staging.rglob("*")):
            if source.is_file():
                target = destination / source.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                written.append(target)
        moved = True
        return written
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        if created and not moved:
            with contextlib.suppress(OSError):
                destination.rmdir()  # only if empty: leave no folder behind a refused archive
