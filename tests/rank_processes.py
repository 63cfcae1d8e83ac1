"""Start a worker script once per rank, meeting through a file store (no port), and never hang (shared by the
two-process tests).

torchrun's ``--standalone`` rendezvous and ``MASTER_PORT`` need free TCP ports; on a busy shared machine with other
distributed runs that is a needless source of flaky failures. Here every rank gets ``RANK``, ``WORLD_SIZE`` and
``DIST_INIT_METHOD=file://OUT_DIR/store`` in its environment; past ``timeout`` seconds every rank still running is
sent SIGABRT (``PYTHONFAULTHANDLER`` makes it print where each of its threads is), then killed, and the test fails
with the ranks' stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_ranks(worker: Path, out_dir: Path, args=(), world: int = 2, timeout: float = 240) -> list[str]:
    """Run ``python worker *args`` as ranks 0..world-1; return their stderr tails. Fails on timeout or non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(world), "PYTHONFAULTHANDLER": "1",
           "DIST_INIT_METHOD": f"file://{Path(out_dir).resolve() / 'store'}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    processes = [subprocess.Popen([sys.executable, str(worker), *map(str, args)], env={**env, "RANK": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    deadline, tails, timed_out = time.monotonic() + timeout, [], False
    for process in processes:  # one deadline for all: a rank after a stuck one gets only the time left
        try:
            _, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _, stderr = _stop(process)
        tails.append(stderr[-3000:])
    report = "\n".join(f"--- rank {r} stderr ---\n{tail}" for r, tail in enumerate(tails))
    if timed_out:
        pytest.fail(f"{worker.name} did not finish within {timeout} s (all ranks stopped)\n{report}")
    failed = [(r, p.returncode) for r, p in enumerate(processes) if p.returncode != 0]
    assert not failed, f"ranks exited with {failed}:\n{report}"
    return tails


def _stop(process: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT (the fault handler prints every thread's stack), then SIGKILL if it lingers; returns its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGABRT)
        try:
            return process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.communicate()


def init_from_environment(timeout_seconds: float = 60) -> tuple[int, int]:
    """In a worker: ``init_process_group("gloo")`` from ``run_ranks``' environment; returns (rank, world size)."""
    import datetime

    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=os.environ["DIST_INIT_METHOD"], rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_seconds))
    return rank, world


def end_worker() -> None:
    """In a worker, after its results are written: meet the other ranks, then leave without running destructors.

    A worker must not end by dropping its last reference to the gloo process group. In torch 2.13 the group's
    destructor joins its worker threads while holding the GIL; when one of those threads is at that moment freeing
    a just-finished collective whose tensors belong to Python (``all_gather_object`` makes such tensors), it waits for
    the GIL and the two wait for each other for ever. gdb showed exactly that in about one run of the NT-Xent worker
    in eight (main thread in ``~ProcessGroupGloo`` -> ``std::thread::join``, a ``pt_gloo_runloop`` thread in
    ``~AsyncAllgatherWork`` -> ``take_gil``). The barrier makes sure no rank leaves while another still needs it;
    ``os._exit`` then ends the process with no destructors at all.
    """
    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
