"""Bundle processes that die with the experiment runner, run folders that say who owns them, one runner per folder.

A bundle run is a ``python -m monai.bundle run`` child process (with its own DataLoader workers). Left alone, a
runner killed by ``kill -9`` or Ctrl-C leaves it running and writing into a run folder that the next runner deletes
and re-creates. Here:

- each bundle process leads its own process group (``start_new_session``), so its workers can be ended with it;
- ``BundleProcesses.stop_all`` ends every group the runner started (SIGTERM, then SIGKILL after a grace period); it
  runs at interpreter exit (``atexit``) and on SIGTERM / SIGINT (``stop_on_signals``);
- on Linux the child also asks the kernel for SIGKILL when the runner dies (``prctl(PR_SET_PDEATHSIG)``), which
  covers ``kill -9`` of the runner, where no handler runs;
- a run folder holds ``owner.json`` (runner and bundle pids, host): ``clear_run_folder`` refuses to delete a folder
  whose runner is alive, and ends a stale bundle process (its runner is gone) before deleting its folder;
- ``output_lock`` holds an exclusive ``fcntl`` lock on ``OUT/.lock`` for the whole run of a grid, so a second runner
  on the same output folder gets a one-line error (or waits, with ``wait=True``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from mri_ssl.errors import InputError

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
LOCK_FILE = ".lock"
GRACE_S = 5.0  # how long a bundle process gets to end after SIGTERM before SIGKILL
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class RunnerStopping(RuntimeError):
    """The runner is stopping (a signal or its exit): no new bundle process is started."""


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies (Linux only), else None.

    libc's ``prctl`` is looked up here, in the parent, so the child (between fork and exec, where a multithreaded
    parent's locks may be held) only calls it. If the parent died before the call, the child kills itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the runner is already gone
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


def _has_exited(process: subprocess.Popen) -> bool:
    """Whether ``process`` has ended, without reaping it (the thread that started it collects its status)."""
    if process.returncode is not None:
        return True
    if not hasattr(os, "waitid"):
        return process.poll() is not None
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _signal_group(process_group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process_group, signum)


class BundleProcesses:
    """The bundle processes this runner started and has not seen end; all of them end when the runner does."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: dict[int, subprocess.Popen] = {}
        self.stopping = False

    def start(self, command: list[str], **popen_arguments) -> subprocess.Popen:
        """``subprocess.Popen(command)`` as the leader of a new process group that dies with this process."""
        with self._lock:
            if self.stopping:
                raise RunnerStopping(f"the runner is stopping; not starting {' '.join(command[:4])} ...")
            process = subprocess.Popen(command, start_new_session=True, preexec_fn=_parent_death_signal(),
                                       **popen_arguments)
            self._live[process.pid] = process
        return process

    def finished(self, process: subprocess.Popen) -> None:
        """Forget ``process`` (it has ended and been waited for); its leftover group members are ended."""
        with self._lock:
            self._live.pop(process.pid, None)
        _signal_group(process.pid, signal.SIGKILL)  # e.g. DataLoader workers that outlived their parent

    def stop_all(self, grace_s: float = GRACE_S) -> int:
        """End every live bundle process group: SIGTERM, up to ``grace_s`` to exit, then SIGKILL. Returns how many
        there were. No new process starts afterwards."""
        with self._lock:
            self.stopping = True
            live = list(self._live.values())
        for process in live:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not all(_has_exited(process) for process in live):
            time.sleep(0.05)
        for process in live:
            _signal_group(process.pid, signal.SIGKILL)
        return len(live)


BUNDLE_PROCESSES = BundleProcesses()
atexit.register(BUNDLE_PROCESSES.stop_all)


@contextlib.contextmanager
def stop_on_signals(processes: BundleProcesses = BUNDLE_PROCESSES) -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT first end every bundle process, then stop the
    runner (``SystemExit(143)`` / ``KeyboardInterrupt``). Elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        name = signal.Signals(signum).name
        count = processes.stop_all()
        print(f"mri-ssl experiment: {name}: ended {count} bundle process(es)", file=sys.stderr)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------------------------
# run folders


def write_owner(folder: Path, bundle_pid: int | None = None) -> None:
    """Record in ``folder/owner.json`` that this runner (and its bundle process ``bundle_pid``) uses the folder."""
    owner = {"runner_pid": os.getpid(), "bundle_pid": bundle_pid, "host": socket.gethostname()}
    (folder / OWNER_FILE).write_text(json.dumps(owner) + "\n")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _runs_in(pid: int, folder: Path) -> bool | None:
    """Whether process ``pid`` is a bundle run in ``folder`` (its command line names it); None where unknown."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return b"monai.bundle" in command and os.fsencode(str(folder)) in command


def clear_run_folder(folder: Path, grace_s: float = GRACE_S) -> None:
    """Delete ``folder`` (an earlier attempt of a run) unless a live process still uses it.

    A folder whose runner is alive (another ``mri-ssl experiment``) is refused with an ``InputError``. A bundle
    process left running by a runner that died is stale: it is ended (its whole group) before the folder goes.
    """
    if not folder.exists():
        return
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        owner = {}
    if owner and owner.get("host") == socket.gethostname():
        runner, bundle = owner.get("runner_pid"), owner.get("bundle_pid")
        if runner != os.getpid() and _alive(runner):
            raise InputError(folder, f"is in use by a running `mri-ssl experiment` (pid {runner}); not deleting "
                                     f"it: wait for that runner or stop it")
        if _alive(bundle):
            ours = _runs_in(bundle, folder)
            if ours is None:
                raise InputError(folder, f"bundle process {bundle} of an earlier runner may still write here; end "
                                         f"it, then run again")
            if ours:
                logger.warning("ending bundle process %d left running in %s by a runner that is gone", bundle, folder)
                _signal_group(bundle, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline and _alive(bundle) and _runs_in(bundle, folder):
                    time.sleep(0.05)
                _signal_group(bundle, signal.SIGKILL)
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------------------------
# the output folder


@contextlib.contextmanager
def output_lock(out_dir: Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir/.lock`` while a runner writes the folder.

    A second runner on the same folder gets an ``InputError`` naming the folder and the pid that holds it, or with
    ``wait`` blocks until the first is done. The lock is the kernel's (``fcntl.flock``), so it goes with the process,
    also after ``kill -9``. Where ``fcntl`` is missing (Windows) the block runs unlocked.
    """
    path = Path(out_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield path
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise InputError(out_dir, f"another `mri-ssl experiment` (pid {holder}) is writing this output folder; "
                                      f"wait for it to finish or use another --out") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
