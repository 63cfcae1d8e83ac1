"""Peak memory of a process and everything it starts, for the demo's "at most 6 GB" report.

``resource.getrusage`` gives the largest single process (this one, or the largest finished child), which
undercounts when bundle runs go in parallel. ``ProcessTreeMemory`` samples the summed resident memory of this
process and all its descendants from ``/proc`` in a background thread; where ``/proc`` is missing (macOS, Windows)
only the ``getrusage`` figure is reported.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

PROC = Path("/proc")


def largest_process_gb() -> float:
    """The largest resident memory of this process or any finished child, in GB (from ``getrusage``)."""
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, kilobytes on Linux
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak * unit / 1e9


def _parent_ids() -> dict[int, int]:
    parents = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        parents[int(entry.name)] = int(fields[1])
    return parents


def tree_resident_bytes(root: int | None = None) -> int:
    """Summed resident memory (bytes) of process ``root`` (default: this one) and all its descendants (Linux)."""
    root = os.getpid() if root is None else root
    parents = _parent_ids()
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in tree:
        try:
            total += int((PROC / str(pid) / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


class ProcessTreeMemory:
    """Context manager sampling ``tree_resident_bytes`` every ``interval_s`` seconds; ``peak_gb`` after the block is
    the largest sum seen (and never less than the ``getrusage`` figure)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = float(interval_s)
        self.peak_bytes = 0
        self.sampled = PROC.is_dir() and hasattr(os, "sysconf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, tree_resident_bytes())
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "ProcessTreeMemory":
        if self.sampled:
            self._thread = threading.Thread(target=self._sample, name="memory-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_gb(self) -> float:
        return round(max(self.peak_bytes / 1e9, largest_process_gb()), 2)
