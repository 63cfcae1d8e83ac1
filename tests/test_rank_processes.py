"""The two-process test launcher itself: a stuck rank is stopped at the deadline and the failure shows where it was
stuck; a rank that fails is reported with its stderr."""

from pathlib import Path

import pytest

from rank_processes import run_ranks


def test_a_stuck_rank_is_stopped_and_its_stack_is_reported(tmp_path):
    worker = tmp_path / "stuck_worker.py"
    worker.write_text("import os, time\n"
                      "def wait_for_ever():\n"
                      "    while True:\n"
                      "        time.sleep(0.1)\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    wait_for_ever()\n")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_ranks(worker, tmp_path, timeout=5)
    message = str(failure.value)
    assert "did not finish within 5 s" in message
    assert "wait_for_ever" in message  # the fault handler's stack of the stuck rank


def test_a_failing_rank_is_reported_with_its_stderr(tmp_path: Path):
    worker = tmp_path / "failing_worker.py"
    worker.write_text("import os, sys\n"
                      "if os.environ['RANK'] == '0':\n"
                      "    sys.exit('rank 0 gave up on purpose')\n")
    with pytest.raises(AssertionError, match=r"ranks exited with \[\(0, 1\)\][\s\S]*gave up on purpose"):
        run_ranks(worker, tmp_path, timeout=60)
