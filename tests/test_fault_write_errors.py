"""Fault injection on writes: disk full and permission errors name the file and the cause, and keep the old file.

The probe of issue 19 filled a 20 MB tmpfs under a checkpoint folder and got ``RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos ...``. Every write goes through ``mri_ssl.io.atomic.atomic_output``, which now
raises ``WriteError`` (an ``OSError``) naming the file and the cause, while the previous file stays as it was.
"""

import errno
import io
import os
import shutil
import subprocess
import uuid

import pytest
import torch

from mri_ssl.io import atomic
from mri_ssl.engines import checkpoint as checkpoint_module
from mri_ssl.engines import load_checkpoint, save_checkpoint, save_safetensors
from mri_ssl.errors import WriteError
from mri_ssl.io.atomic import atomic_write_text


class FillingStream(io.FileIO):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    room = 4096

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if ".partial" in name)


def test_disk_full_during_a_checkpoint_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    save_checkpoint({"epoch": 1, "network": {"w": torch.zeros(10)}}, target)
    monkeypatch.setattr(checkpoint_module, "open", lambda path, mode: FillingStream(path, "w"), raising=False)
    with pytest.raises(WriteError) as caught:
        save_checkpoint({"epoch": 2, "network": {"w": torch.zeros(100_000)}}, target)
    message = str(caught.value)
    assert message.startswith(f"{target}: ") and "no space left on device (ENOSPC)" in message
    assert "previous file is unchanged" in message and "enforce fail" not in message
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert load_checkpoint(target)["epoch"] == 1 and leftovers(tmp_path) == []


def test_disk_full_in_a_safetensors_twin_names_the_file(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(WriteError, match=r"best.safetensors: cannot write: no space left on device \(ENOSPC\); "
                                         r"nothing was written"):
        save_safetensors({"w": torch.zeros(3)}, tmp_path / "best.safetensors")
    assert leftovers(tmp_path) == []


def test_permission_denied_names_the_file_and_the_cause(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "summary.json", "{}")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    with pytest.raises(WriteError, match=r"summary.json: cannot write: permission denied \(EACCES\) on "
                                         r"\S+; the previous file is unchanged"):
        atomic_write_text(tmp_path / "summary.json", '{"new": 1}')
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_errors_of_the_data_are_not_mistaken_for_write_errors(tmp_path):
    from mri_ssl.errors import InputError

    with pytest.raises(InputError):
        with atomic.atomic_output(tmp_path / "out.txt"):
            raise InputError("maps", "bad")
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_output(tmp_path / "out.txt"):
            1 / 0
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 1 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_real_full_disk_keeps_the_old_checkpoint_and_says_so(small_filesystem):
    target = small_filesystem / "models" / "latest.pt"
    save_checkpoint({"epoch": 1, "network": {"w": torch.zeros(1000)}}, target)
    with pytest.raises(WriteError, match=r"latest.pt: cannot write: no space left on device \(ENOSPC\)"):
        save_checkpoint({"epoch": 2, "network": {"w": torch.zeros(400_000)}}, target)  # 1.6 MB > 1 MiB
    assert load_checkpoint(target)["epoch"] == 1 and leftovers(target.parent) == []
    with pytest.raises(WriteError, match=r"report.md: cannot write: no space left on device \(ENOSPC\)"):
        atomic_write_text(small_filesystem / "report.md", "x" * 2_000_000)


def test_the_command_line_reports_a_refused_write_in_one_line(tmp_path, monkeypatch, capsys):
    import json

    import nibabel as nib
    import numpy as np

    from mri_ssl.cli import main

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), np.eye(4)),
             str(tmp_path / "a.nii.gz"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"training": [{"image": "a.nii.gz", "subject": "s1"}]}))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", full)
    report = tmp_path / "check.json"
    assert main(["check-data", str(manifest), "--label-key", "", "--report", str(report), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"mri-ssl check-data: error: {report}: cannot write: no space left on device (ENOSPC); "
                     f"nothing was written")
