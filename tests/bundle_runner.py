"""Run a bundle the way a user does, `python -m monai.bundle run`, in a subprocess (shared by the bundle tests)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bundle_dir(name: str) -> Path:
    return REPO / "bundles" / name


def write_override(folder: Path, name: str = "tiny.json", **values) -> Path:
    """A JSON override file passed after a bundle's own configs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(values))
    return path


def run_bundle(bundle_root, config_files, timeout=600, launcher=None) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run --config_file [...] --bundle_root bundle_root`, one thread, from bundle_root.

    The command runs in its own process group; past ``timeout`` seconds the whole group is killed (a launcher such
    as torchrun and all its workers, not only the launcher) and ``subprocess.TimeoutExpired`` is raised.
    """
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    command = (launcher or [sys.executable]) + ["-m", "monai.bundle", "run", "--config_file", files,
                                                "--bundle_root", str(bundle_root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return run_killing_group(command, timeout, cwd=bundle_root, env=env)


def run_killing_group(command, timeout, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True)`` in a new session; on timeout kill its whole
    process group (so no worker is left behind waiting in a collective) and re-raise ``TimeoutExpired``."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
