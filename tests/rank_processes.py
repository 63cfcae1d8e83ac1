"""Start a worker script once per rank, meeting through a file store (no port), and never hang (shared by the
two-process tests).

torchrun's ``--standalone`` rendezvous and ``MASTER_PORT`` need free TCP ports; on a busy shared machine with other
distributed runs that is a needless source of flaky failures. Here every rank gets ``RANK``, ``WORLD_SIZE`` and
``DIST_INIT_METHOD=file://OUT_DIR/store`` in its environment; past ``timeout`` seconds every rank is killed and the
test fails with the ranks' stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_ranks(worker: Path, out_dir: Path, args=(), world: int = 2, timeout: float = 240) -> list[str]:
    """Run ``python worker *args`` as ranks 0..world-1; return their stderr tails. Fails on timeout or non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(world),
           "DIST_INIT_METHOD": f"file://{Path(out_dir).resolve() / 'store'}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    processes = [subprocess.Popen([sys.executable, str(worker), *map(str, args)], env={**env, "RANK": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    tails = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=timeout)
            tails.append(stderr[-3000:])
    except subprocess.TimeoutExpired:
        pytest.fail(f"{worker.name} did not finish within {timeout} s (all ranks killed)")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = [(r, p.returncode) for r, p in enumerate(processes) if p.returncode != 0]
    assert not failed, f"ranks exited with {failed}:\n" + "\n".join(tails)
    return tails


def init_from_environment(timeout_seconds: float = 60) -> tuple[int, int]:
    """In a worker: ``init_process_group("gloo")`` from ``run_ranks``' environment; returns (rank, world size)."""
    import datetime

    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=os.environ["DIST_INIT_METHOD"], rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_seconds))
    return rank, world
