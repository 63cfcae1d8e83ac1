"""What parallel bundle runs rely on: one writer of shared demo data (``exclusive_lock``) and a memory figure that
counts every process of the run (``ProcessTreeMemory``)."""

import subprocess
import sys
import textwrap
import time

import pytest

from mri_ssl.experiments.memory import PROC, ProcessTreeMemory, tree_resident_bytes
from mri_ssl.io.atomic import exclusive_lock

linux_only = pytest.mark.skipif(not PROC.is_dir() or sys.platform == "win32", reason="needs /proc and fcntl")


@linux_only
def test_exclusive_lock_makes_a_second_process_wait(tmp_path):
    lock, log = tmp_path / "data" / ".lock", tmp_path / "log.txt"
    holder = textwrap.dedent(f"""
        import time
        from mri_ssl.io.atomic import exclusive_lock
        with exclusive_lock({str(lock)!r}):
            open({str(log)!r}, "a").write("child in\\n")
            time.sleep(1.0)
            open({str(log)!r}, "a").write("child out\\n")
    """)
    child = subprocess.Popen([sys.executable, "-c", holder])
    try:
        deadline = time.monotonic() + 60
        while not (log.is_file() and "child in" in log.read_text()):
            assert time.monotonic() < deadline and child.poll() is None, "the child never took the lock"
            time.sleep(0.02)
        with exclusive_lock(lock):
            log.open("a").write("parent in\n")
    finally:
        child.wait(timeout=60)
    assert log.read_text().splitlines() == ["child in", "child out", "parent in"]


@linux_only
def test_process_tree_memory_counts_children():
    """A child holding ~200 MB raises the tree's resident memory by about that much; the sampler's peak sees it."""
    size_mb = 200
    code = f"import time; block = bytearray({size_mb} * 1024 * 1024); print('ready', flush=True); time.sleep(3)"
    before = tree_resident_bytes()
    with ProcessTreeMemory(interval_s=0.05) as memory:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        during = tree_resident_bytes()
        child.wait(timeout=60)
    assert during - before > 0.8 * size_mb * 1024 ** 2
    assert memory.peak_gb >= round(during / 1e9, 2) - 0.01
    assert memory.peak_gb < 6  # and it stays a figure of this process tree, not of the machine
