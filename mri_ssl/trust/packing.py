"""Bundle archives for sharing: `pack-bundle` (verify, manifest of sha256, zip) and `unpack-bundle` (check first).

The archive holds one top folder ``NAME/`` with the bundle's files and ``NAME/manifest.json``::

    {"name": "mri_segmentation", "version": "0.1.1", "hash_type": "sha256", "files": {"configs/train.json": "..."}}

Weights and run outputs are not packed: large files are listed in large_files.yml with their sha256 and fetched
with `mri-ssl fetch-weights`, as the model zoo does. ``unpack_bundle`` refuses unsafe members (absolute paths,
``..``, links), any file missing from or not listed in the manifest, any hash mismatch and any member over the size
or compression-ratio limits (``trust.files.ExtractLimits``), leaving nothing in the destination; members are streamed
to disk and hashed on the way, never read whole into memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output
from mri_ssl.io.hashing import sha256_file
from mri_ssl.trust.files import BUNDLE_LIMITS, ExtractLimits, check_archive, safe_extract

MANIFEST = "manifest.json"
MANIFEST_BYTES = 16 << 20
# Run outputs and caches a bundle folder collects; never part of a shared bundle.
EXCLUDED_DIRS = frozenset({"models", "logs", "demo_data", "predictions", "features", "eval", "__pycache__",
                           ".ipynb_checkpoints", ".pytest_cache"})


def bundle_files(root: Path) -> list[Path]:
    """Files to pack, relative to ``root``: everything except run outputs, caches, hidden files and symlinks."""
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink():
            raise InputError(path, "bundles may not contain symbolic links")
        if path.is_file() and relative.as_posix() != MANIFEST:
            files.append(relative)
    return files


def bundle_identity(root: Path) -> tuple[str, str]:
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    return root.name, str(metadata["version"])


def pack_bundle(bundle_root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``NAME_vVERSION.zip`` (or ``out``) with the bundle and its sha256 manifest, atomically."""
    root = Path(bundle_root).resolve()
    name, version = bundle_identity(root)
    out = Path(out) if out else Path(f"{name}_v{version}.zip")
    if out.suffix != ".zip":
        raise InputError("--out", f"must end in .zip, got {out}")
    files = bundle_files(root)
    manifest = {"name": name, "version": version, "hash_type": "sha256",
                "files": {f.as_posix(): sha256_file(root / f) for f in files}}
    with atomic_output(out) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for relative in files:
                archive.write(root / relative, f"{name}/{relative.as_posix()}")
            archive.writestr(f"{name}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def _read_manifest(archive: zipfile.ZipFile, name: str, archive_path: Path) -> dict:
    """The JSON manifest member, read within ``MANIFEST_BYTES`` (a manifest lists file names and hashes only)."""
    info = archive.getinfo(name)
    if info.file_size > MANIFEST_BYTES:
        raise InputError(archive_path, f"{name} declares {info.file_size} bytes; a manifest is under {MANIFEST_BYTES}")
    with archive.open(info) as stream:
        data = stream.read(MANIFEST_BYTES + 1)
    if len(data) > MANIFEST_BYTES:
        raise InputError(archive_path, f"{name} is larger than {MANIFEST_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as error:
        raise InputError(archive_path, f"{name} is not JSON ({error})") from error


def _check_manifest(archive_path: Path) -> tuple[str, dict]:
    """The bundle name and manifest of a packed bundle, after checking that it lists exactly the archive's files.

    The members' hashes are checked while they are extracted (``safe_extract`` with ``expected_sha256``), so no
    member is ever read whole into memory.
    """
    names = check_archive(archive_path)
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        raise InputError(archive_path, f"expected one top folder, found {sorted(tops)}")
    top = tops.pop()
    with zipfile.ZipFile(archive_path) as archive:
        try:
            manifest = _read_manifest(archive, f"{top}/{MANIFEST}", archive_path)
        except KeyError as error:
            raise InputError(archive_path, f"no {top}/{MANIFEST}: not made by `mri-ssl pack-bundle`") from error
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict) or manifest.get("hash_type") != "sha256":
        raise InputError(archive_path, "manifest must hold hash_type sha256 and a files mapping")
    members = {n[len(top) + 1:] for n in names if not n.endswith("/")} - {MANIFEST}
    if members - set(listed):
        raise InputError(archive_path, f"files not in the manifest: {sorted(members - set(listed))}")
    if set(listed) - members:
        raise InputError(archive_path, f"files in the manifest but not in the archive: "
                                       f"{sorted(set(listed) - members)}")
    return top, manifest


def unpack_bundle(archive: str | os.PathLike, destination: str | os.PathLike,
                  limits: ExtractLimits = BUNDLE_LIMITS) -> Path:
    """Check a packed bundle against its manifest, then extract it to ``destination/NAME`` (which must not exist).

    Members are streamed to disk within ``limits`` and hashed on the way; any mismatch or crossed limit refuses the
    whole archive and leaves ``destination`` as it was."""
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise InputError(archive, "archive not found")
    if not zipfile.is_zipfile(archive):
        raise InputError(archive, "not a zip archive")
    top, manifest = _check_manifest(archive)
    target = destination / top
    if target.exists():
        raise InputError(target, "already exists; remove it or unpack elsewhere")
    created = not destination.exists()
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack.", dir=destination))
    expected = {f"{top}/{relative}": digest for relative, digest in manifest["files"].items()}
    try:
        safe_extract(archive, staging, limits, expected_sha256=expected)
        os.replace(staging / top, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not target.exists():
            with contextlib.suppress(OSError):
                destination.rmdir()
    return target
