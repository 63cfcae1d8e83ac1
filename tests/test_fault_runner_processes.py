"""Fault injection on the experiment runner: bundle processes die with it; two runners never share an output folder.

The probe of issue 19 found that ``kill -9`` of ``mri-ssl experiment`` left its ``monai.bundle run`` child running
(parent 1) while the next runner deleted and re-created its run folder, and that two runners on one ``--out`` deleted
each other's run folders. Here a stand-in runner (a Python process that starts a long "bundle" child through
``BUNDLE_PROCESSES``, as ``_run_stage`` does) is killed in each way, and the child must be gone within seconds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mri_ssl.errors import InputError
from mri_ssl.experiments import processes
from mri_ssl.experiments.processes import OWNER_FILE, clear_run_folder, output_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups and signals")

# A runner that starts one long-lived child in ``folder`` the way the experiment runner starts a bundle stage, prints
# the child's pid, then waits (optionally inside ``stop_on_signals``) or exits at once (``exit``).
# processes.py is loaded on its own (mri_ssl.experiments imports torch), so the stand-in runner starts in a moment.
LOAD_PROCESSES = textwrap.dedent(f"""
    import importlib.util
    spec = importlib.util.spec_from_file_location("processes", {str(Path(processes.__file__))!r})
    processes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(processes)
""")
RUNNER = LOAD_PROCESSES + textwrap.dedent("""
    import sys, time
    BUNDLE_PROCESSES, stop_on_signals = processes.BUNDLE_PROCESSES, processes.stop_on_signals
    folder, how = sys.argv[1], sys.argv[2]
    with stop_on_signals():
        child = BUNDLE_PROCESSES.start([sys.executable, "-c", "import time; time.sleep(120)", "monai.bundle", folder])
        print(child.pid, flush=True)
        if how == "exit":
            sys.exit(0)
        time.sleep(120)
""")


def gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie not yet reaped by its new parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def start_runner(tmp_path, how: str):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path), how], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    child = int(runner.stdout.readline())
    if how != "exit":  # an exiting runner may already have ended it
        assert not gone(child)
    return runner, child


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_kill_9_of_the_runner_takes_its_bundle_process_with_it(tmp_path):
    runner, child = start_runner(tmp_path, "wait")
    runner.kill()
    runner.wait()
    assert wait_until(lambda: gone(child)), "the bundle process outlived its runner"


@pytest.mark.parametrize("signum, exit_codes", [(signal.SIGTERM, {128 + signal.SIGTERM}),
                                                (signal.SIGINT, {1, -signal.SIGINT})])  # Python 3.12+: -SIGINT
def test_sigterm_and_sigint_end_the_bundle_processes_first(tmp_path, signum, exit_codes):
    runner, child = start_runner(tmp_path, "wait")
    runner.send_signal(signum)
    assert runner.wait(timeout=20) in exit_codes
    assert "ended 1 bundle process(es)" in runner.stderr.read()
    assert wait_until(lambda: gone(child), 2.0)


def test_a_runner_that_exits_ends_its_bundle_processes(tmp_path):
    runner, child = start_runner(tmp_path, "exit")
    assert runner.wait(timeout=20) == 0
    assert wait_until(lambda: gone(child), 2.0)


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def write_owner(folder: Path, runner_pid: int, bundle_pid: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir()
    (folder / OWNER_FILE).write_text(json.dumps({"runner_pid": runner_pid, "bundle_pid": bundle_pid,
                                                 "host": socket.gethostname()}))


def test_a_stale_bundle_process_is_ended_before_its_folder_is_deleted(tmp_path):
    folder = tmp_path / "runs" / "a-123"
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "monai.bundle", str(folder)],
                              start_new_session=True)
    write_owner(folder, dead_pid(), orphan.pid)
    clear_run_folder(folder, grace_s=5.0)
    assert orphan.wait(timeout=5) == -signal.SIGTERM and not folder.exists()


def test_a_folder_whose_runner_is_alive_is_not_deleted(tmp_path):
    folder = tmp_path / "runs" / "a-123"
    other_runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_owner(folder, other_runner.pid, None)
        with pytest.raises(InputError, match=rf"a-123: is in use by a running `mri-ssl experiment` \(pid "
                                             rf"{other_runner.pid}\)"):
            clear_run_folder(folder)
        assert (folder / "models").is_dir()
    finally:
        other_runner.kill()
        other_runner.wait()
    clear_run_folder(folder)  # its runner is gone now: an ordinary stale folder
    assert not folder.exists()


def test_an_unrelated_process_with_a_reused_pid_is_left_alone(tmp_path):
    folder = tmp_path / "runs" / "a-123"
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_owner(folder, dead_pid(), unrelated.pid)
        clear_run_folder(folder)
        assert not folder.exists() and unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


HOLD_LOCK = LOAD_PROCESSES + textwrap.dedent("""
    import sys, time
    from pathlib import Path
    with processes.output_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold_lock(out: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_runner_on_the_same_output_folder_gets_one_clear_line(tmp_path, capsys):
    from mri_ssl.cli import main

    out = tmp_path / "out"
    holder = hold_lock(out, 60)
    try:
        grid = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
        assert main(["experiment", str(grid), "--out", str(out), "--quiet"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1, error
        assert f"another `mri-ssl experiment` (pid {holder.pid}) is writing this output folder" in error
        assert str(out) in error and not (out / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel released the lock with the killed holder
        pass


def test_waiting_for_the_lock_starts_when_the_first_runner_is_done(tmp_path, monkeypatch):
    from mri_ssl.cli import main
    from mri_ssl.experiments import runner

    out = tmp_path / "out"
    holder = hold_lock(out, 1.5)
    started, waited = time.monotonic(), []
    monkeypatch.setattr(runner, "_run_grid", lambda *args: waited.append(time.monotonic() - started) or [])
    monkeypatch.setattr("mri_ssl.experiments.write_tables", lambda grid, results, out: {
        "markdown": (tmp_path / "r.md"), "csv": tmp_path / "r.csv"})
    (tmp_path / "r.md").write_text("")
    grid = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    assert main(["experiment", str(grid), "--out", str(out), "--quiet", "--wait"]) == 0
    holder.wait()
    assert waited and waited[0] > 1.0  # the holder keeps the lock for 1.5 s


def test_the_runner_starts_no_bundle_process_once_it_is_stopping():
    stopping = processes.BundleProcesses()
    assert stopping.stop_all(grace_s=0.1) == 0
    with pytest.raises(processes.RunnerStopping):
        stopping.start([sys.executable, "-c", "pass"])
