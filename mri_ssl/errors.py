"""The error types the toolkit raises for bad input and for files it cannot write.

Every error names *what* is wrong (a file, a map, a protocol parameter) and *why*, so that a user can fix the
input without reading a traceback. The input errors subclass ``ValueError`` and ``WriteError`` subclasses
``OSError``, so callers that already catch those keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data: a map, an image or a file that cannot be used.

    Args:
        source: what is wrong, e.g. a file path or a map name such as ``"r1"``.
        problem: a sentence saying what is wrong with it and, where possible, what to do.
    """

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class ProtocolError(InputError):
    """A sequence name or acquisition parameter that is unknown or physically inconsistent."""


class WriteError(OSError):
    """A file that could not be written (disk full, no permission, read-only file system, ...).

    Raised by ``mri_ssl.io.atomic.atomic_output`` in place of the bare ``OSError`` (or the ``RuntimeError`` that
    ``torch.save`` wraps it in), so the message names the file and the cause. A subclass of ``OSError`` that keeps
    the original ``errno``, so callers that already catch ``OSError`` keep working.

    Args:
        target: the file that was being written.
        problem: what went wrong, e.g. ``"no space left on device (ENOSPC)"``.
        errno_code: the ``errno`` of the underlying failure, if any.
    """

    def __init__(self, target: str, problem: str, errno_code: int | None = None):
        super().__init__(errno_code, problem, str(target))
        self.source = str(target)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"
