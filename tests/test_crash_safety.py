"""Crash safety: a save killed half-way, a NaN at step k, resume after a kill, the resume chain, NaN weights.

The killed runs are real processes (tests/crash_worker.py) ended by SIGKILL, which no Python handler can intercept:
what they leave on disk is what a power cut or an OOM kill would leave.
"""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from crash_worker import train
from mri_ssl.engines import AtomicCheckpointer, NonFiniteLossError, load_checkpoint
from mri_ssl.engines.guards import NonFiniteWeightsError

WORKER = Path(__file__).with_name("crash_worker.py")
REPO = Path(__file__).resolve().parents[1]


def run_worker(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def logged_iterations(folder: Path) -> list[tuple[int, float]]:
    lines = (folder / "losses.txt").read_text().split()
    return [(int(lines[i]), float(lines[i + 1])) for i in range(0, len(lines), 2)]


def test_a_checkpoint_write_killed_half_way_leaves_the_previous_one_loadable(tmp_path):
    result = run_worker("save-killed", tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    previous = load_checkpoint(tmp_path / "latest.pt")
    assert previous["step"] == 1 and torch.equal(previous["weights"], torch.arange(1000.0))
    partial = [p.name for p in tmp_path.iterdir() if "partial" in p.name]
    assert len(partial) == 1 and partial[0].startswith(".latest.")  # the half-written temporary, not latest.pt
    # The next run's checkpointer clears the debris and leaves the real checkpoint alone.
    AtomicCheckpointer(tmp_path, torch.nn.Linear(1, 1)).attach(Engine(lambda engine, batch: None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_resume_after_a_kill_continues_from_the_right_iteration(tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    result = run_worker("train", killed, "--epochs", 4, "--epoch-length", 3, "--kill-at", 8)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    before_kill = logged_iterations(killed)
    assert [i for i, _ in before_kill] == list(range(1, 9))
    latest = load_checkpoint(killed / "latest.pt")
    assert (latest["epoch"], latest["iteration"]) == (2, 6) and not (killed / "final.pt").exists()

    result = run_worker("train", killed, "--epochs", 4, "--epoch-length", 3, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {killed / 'latest.pt'}: epoch 2, iteration 6 done" in result.stderr
    after = logged_iterations(killed)[len(before_kill):]
    assert [i for i, _ in after] == list(range(7, 13))
    # Iterations 7 and 8 ran twice (before the kill, and again after resuming): the same losses both times.
    assert [loss for _, loss in after[:2]] == pytest.approx([loss for _, loss in before_kill[6:8]], rel=1e-9)
    final = load_checkpoint(killed / "final.pt")
    assert (final["epoch"], final["iteration"]) == (4, 12)

    straight = tmp_path / "straight"
    straight.mkdir()
    train(str(straight), epochs=4, epoch_length=3, kill_at=None, nan_at=None, resume=False)
    expected = load_checkpoint(straight / "final.pt")["network"]
    for name, tensor in expected.items():
        torch.testing.assert_close(final["network"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def test_nan_at_step_k_stops_the_run_and_keeps_every_checkpoint_from_before_k(tmp_path):
    reference = tmp_path / "two_epochs"
    reference.mkdir()
    train(str(reference), epochs=2, epoch_length=3, kill_at=None, nan_at=None, resume=False)
    expected = load_checkpoint(reference / "final.pt")["network"]

    folder = tmp_path / "nan"
    folder.mkdir()
    train(str(folder), epochs=2, epoch_length=3, kill_at=None, nan_at=None, resume=False)
    on_disk = {name: (folder / name).read_bytes() for name in ("latest.pt", "best.pt", "final.pt")}
    with pytest.raises(NonFiniteLossError, match="epoch 3, iteration 8") as raised:
        train(str(folder), epochs=4, epoch_length=3, kill_at=None, nan_at=8, resume=True)
    assert raised.value.iteration == 8
    # Iteration 7 was finite and ran; the NaN at 8 stopped the run before backward: no file was rewritten.
    assert [i for i, _ in logged_iterations(folder)] == list(range(1, 8))
    assert {name: (folder / name).read_bytes() for name in on_disk} == on_disk
    for name in ("latest.pt", "best.pt", "final.pt"):
        state = load_checkpoint(folder / name)
        assert state["iteration"] <= 6
        for key, tensor in expected.items():
            assert torch.isfinite(state["network"][key]).all()
    torch.testing.assert_close(load_checkpoint(folder / "latest.pt")["network"], expected)


def test_nan_weights_are_never_written_over_a_checkpoint(tmp_path):
    network = torch.nn.Linear(2, 1)
    trainer = Engine(lambda engine, batch: None)
    checkpointer = AtomicCheckpointer(tmp_path, network, metric_name=None, export_encoder=False)
    checkpointer.attach(trainer)
    trainer.run([0], max_epochs=1)
    before = (tmp_path / "latest.pt").read_bytes()
    released_before = (tmp_path / "final.safetensors").read_bytes()  # the safetensors twin of final.pt
    with torch.no_grad():
        network.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"weight.*NaN or Inf"):
        checkpointer.epoch_completed(trainer)
    with pytest.raises(NonFiniteWeightsError):
        checkpointer.completed(trainer)
    assert (tmp_path / "latest.pt").read_bytes() == before
    assert (tmp_path / "final.safetensors").read_bytes() == released_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "final.safetensors", "latest.pt"]


def test_resume_chain_final_then_latest_then_best(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    network = torch.nn.Linear(2, 1)
    checkpointer = AtomicCheckpointer(tmp_path, network, metric_name=None, export_encoder=False)
    trainer = Engine(lambda engine, batch: None)
    assert checkpointer.resume(trainer, when=True) is None
    assert "no checkpoint (final.pt, latest.pt, best.pt)" in caplog.text and "from scratch" in caplog.text

    train(str(tmp_path), epochs=2, epoch_length=3, kill_at=None, nan_at=None, resume=False)
    assert checkpointer.find_resume_checkpoint()[0].name == "final.pt"
    # A fresh run (no resume) in the same folder rewrites latest, then dies: the old final is stale and skipped.
    with pytest.raises(NonFiniteLossError):
        train(str(tmp_path), epochs=2, epoch_length=3, kill_at=None, nan_at=4, resume=False)
    path, payload = checkpointer.find_resume_checkpoint()
    assert path.name == "latest.pt" and payload["iteration"] == 3
    assert "older than" in caplog.text
    (tmp_path / "latest.pt").write_bytes(b"damaged")
    (tmp_path / "final.pt").unlink()
    path, payload = checkpointer.find_resume_checkpoint()
    assert path.name == "best.pt"
    assert "cannot resume from" in caplog.text
    assert checkpointer.resume(trainer, when="false") is None
