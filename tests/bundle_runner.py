"""Run a bundle the way a user does, `python -m monai.bundle run`, in a subprocess (shared by the bundle tests)."""

import json
import os
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
    """`python -m monai.bundle run --config_file [...] --bundle_root bundle_root`, one thread, from bundle_root."""
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    command = (launcher or [sys.executable]) + ["-m", "monai.bundle", "run", "--config_file", files,
                                                "--bundle_root", str(bundle_root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=bundle_root, capture_output=True, text=True, timeout=timeout, env=env)
