"""records_before: what a resumed run keeps of its history file."""

import json

from mri_ssl.io.history import records_before


def _write(path, records):
    path.write_text(json.dumps({"history": records}))
    return path


def test_keeps_the_records_before_the_resume_point_in_order(tmp_path):
    path = _write(tmp_path / "probe.json", [{"iteration": i, "score": i / 10} for i in (0, 6, 12, 18)])
    assert records_before(path, "iteration", 12) == [{"iteration": 0, "score": 0.0}, {"iteration": 6, "score": 0.6}]
    assert records_before(path, "iteration", 0) == []
    assert len(records_before(path, "iteration", 100)) == 4


def test_records_without_the_counter_or_not_records_are_dropped(tmp_path):
    path = _write(tmp_path / "history.json", [{"epoch": 1}, {"loss": 2.0}, "garbage", {"epoch": 3}])
    assert records_before(path, "epoch", 3) == [{"epoch": 1}]


def test_missing_or_unreadable_history_starts_a_new_one(tmp_path, caplog):
    assert records_before(None, "epoch", 2) == []
    assert records_before(tmp_path / "absent.json", "epoch", 2) == []
    broken = tmp_path / "broken.json"
    broken.write_text('{"history": [{"epoch": 1}')  # truncated by a crash
    assert records_before(broken, "epoch", 2) == []
    assert "broken.json" in caplog.text
    wrong = _write(tmp_path / "wrong.json", [{"epoch": "one"}])
    assert records_before(wrong, "epoch", 2) == []
    assert "wrong.json" in caplog.text
