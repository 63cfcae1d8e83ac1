"""Write files so that a crash or an error never leaves a partial file under the final name.

Everything the toolkit writes for a user (images, checkpoints, reports) goes through ``atomic_output``: the data are
written to a temporary file in the destination folder (same file system, so the final rename is atomic), flushed and
fsynced, then ``os.replace``d onto the final name. On any error the temporary file is removed and the final name is
left as it was, so an older result is never lost to a failed write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


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
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{final.name.split('.')[0]}.", suffix=f".partial{_suffixes(final)}", dir=final.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, final)
        _fsync_directory(final.parent)  # make the rename itself durable, not only the file's bytes
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


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
