"""Write files so that a crash or an error never leaves a partial file under the final name.

Everything the toolkit writes for a user (images, checkpoints, reports) goes through ``atomic_output``: the data are
written to a temporary file in the destination folder (same file system, so the final rename is atomic), flushed and
fsynced, then ``os.replace``d onto the final name. On any error the temporary file is removed and the final name is
left as it was, so an older result is never lost to a failed write. A failure of the file system (disk full, no
permission, read-only) is raised as ``mri_ssl.errors.WriteError`` naming the file and the cause, also when a library
wrapped the ``OSError`` in another exception (``torch.save`` raises ``RuntimeError: [enforce fail ...]``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from mri_ssl.errors import InputError, WriteError


def _suffixes(path: Path) -> str:
    # Keep the full suffix (".nii.gz", not ".gz") so libraries that infer the format from the name still can.
    return "".join(path.suffixes)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    Example::

        with atomic_output("out.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{final.name.split('.')[0]}.", suffix=f".partial{_suffixes(final)}", dir=final.parent
        )
        os.close(handle)
    except OSError as error:
        raise write_error(final, error) from error
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, final)
        _fsync_directory(final.parent)  # make the rename itself durable, not only the file's bytes
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        cause = _os_error_behind(error)
        if cause is not None:
            raise write_error(final, cause, temporary) from error
        raise


def _os_error_behind(error: BaseException) -> OSError | None:
    """The ``OSError`` that caused ``error`` (itself, or one a library wrapped it around), or None.

    Errors of the toolkit's own (an ``InputError`` raised while the data were produced, a ``WriteError`` already
    naming its file) are left as they are.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (InputError, WriteError)):
            return None
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_error(target: Path, error: OSError, temporary: Path | None = None) -> WriteError:
    """A ``WriteError`` for ``target`` that says what the file system refused, e.g. ``no space left on device
    (ENOSPC)``, and that the file under the final name (if any) was left unchanged."""
    code = error.errno
    cause = f"{os.strerror(code).lower()} ({errno.errorcode.get(code, code)})" if code else str(error)
    other = error.filename
    if other is not None and str(other) not in (str(target), str(temporary)):
        cause += f" on {other}"  # e.g. a source file read while the output was written
    state = "the previous file is unchanged" if target.exists() else "nothing was written"
    return WriteError(target, f"cannot write: {cause}; {state}", code)


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def save_json(payload: Mapping, path: str | os.PathLike) -> Path:
    """Write ``payload`` as indented JSON atomically; return the path."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) while the block runs.

    Concurrent processes that write the same shared files (e.g. two bundle runs of an experiment grid writing the
    embedded demo data into one folder) take the lock first, so one writes and the others then find the files
    complete. Uses ``fcntl.flock`` (POSIX); where it is unavailable the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs there must not share a demo folder
        yield path
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
