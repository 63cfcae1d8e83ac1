"""The one resolver of every bundle's datalist: the user's file, or demo data written once per set of parameters,
under a file lock (runs sharing a folder) and by rank 0 only (torch.distributed)."""

import json
import threading
import time
from pathlib import Path

import pytest

from mri_ssl import distributed
from mri_ssl.data.datalist import DEMO_RECORD_NAME, DemoWriter, resolve_datalist
from mri_ssl.errors import InputError
from rank_processes import run_ranks

HERE = Path(__file__).resolve().parent


class CountingWriter:
    """A demo writer that records each call; ``pause_s`` keeps it busy so that concurrent callers overlap."""

    def __init__(self, pause_s: float = 0.0, fail: bool = False):
        self.calls, self.pause_s, self.fail = [], pause_s, fail

    def __call__(self, folder, items: int = 3, scale: float = 1.0, progress: bool = True) -> Path:
        self.calls.append({"items": items, "scale": scale, "progress": progress})
        if self.fail:
            raise OSError("disk full")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        time.sleep(self.pause_s)
        (folder / "datalist.json").write_text(json.dumps({"training": list(range(items))}))
        return folder / "datalist.json"


def test_demo_data_are_written_once_and_rewritten_when_a_parameter_changes(tmp_path):
    writer = CountingWriter()
    demo = DemoWriter("counting", writer)
    path = resolve_datalist("", tmp_path, demo, items=2, progress=False)
    assert path == str(tmp_path / "datalist.json") and len(writer.calls) == 1
    assert writer.calls[0] == {"items": 2, "scale": 1.0, "progress": False}
    # Same data: defaults given or not, 2 or 2.0, another progress setting.
    resolve_datalist("", tmp_path, demo, items=2.0, scale=1)
    assert len(writer.calls) == 1
    resolve_datalist("", tmp_path, demo, items=3)
    assert len(writer.calls) == 2 and json.loads(Path(path).read_text())["training"] == [0, 1, 2]
    record = json.loads((tmp_path / DEMO_RECORD_NAME).read_text())
    assert record["parameters"] == {"items": 3.0, "scale": 1.0} and len(record["sha256"]) == 64
    # A new writer version, or a deleted datalist, also rewrites.
    resolve_datalist("", tmp_path, DemoWriter("counting", writer, version="2"), items=3)
    assert len(writer.calls) == 3
    Path(path).unlink()
    resolve_datalist("", tmp_path, DemoWriter("counting", writer, version="2"), items=3)
    assert len(writer.calls) == 4


def test_progress_given_as_command_line_text_is_read_as_a_switch(tmp_path):
    # `python -m monai.bundle run --progress_bar false` hands the config the text "false", which is truthy.
    writer = CountingWriter()
    resolve_datalist("", tmp_path / "a", DemoWriter("counting", writer), items=2, progress="false")
    resolve_datalist("", tmp_path / "b", DemoWriter("counting", writer), items=2, progress="true")
    assert [call["progress"] for call in writer.calls] == [False, True]
    with pytest.raises(InputError, match="progress_bar"):
        resolve_datalist("", tmp_path / "c", DemoWriter("counting", writer), items=2, progress="sometimes")


def test_a_failed_write_leaves_no_record_so_the_next_run_writes_again(tmp_path):
    resolve_datalist("", tmp_path, DemoWriter("counting", CountingWriter()), items=2)
    with pytest.raises(OSError, match="disk full"):
        resolve_datalist("", tmp_path, DemoWriter("counting", CountingWriter(fail=True)), items=5)
    assert not (tmp_path / DEMO_RECORD_NAME).exists()
    writer = CountingWriter()
    resolve_datalist("", tmp_path, DemoWriter("counting", writer), items=2)
    assert len(writer.calls) == 1


def test_user_datalist_and_bad_arguments(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.json").write_text("{}")
    demo = DemoWriter("counting", CountingWriter(), file_name="manifest.json")
    assert resolve_datalist(tmp_path / "mine", tmp_path / "demo", demo) == str(tmp_path / "mine" / "manifest.json")
    assert resolve_datalist(str(tmp_path / "mine" / "manifest.json"), "", demo).endswith("manifest.json")
    with pytest.raises(InputError, match="datalist not found"):
        resolve_datalist(tmp_path / "nothing.json", tmp_path / "demo", demo)
    with pytest.raises(InputError, match="DemoWriter"):
        resolve_datalist("", tmp_path / "demo", "pretrain")
    with pytest.raises(InputError, match="sizes"):
        resolve_datalist("", tmp_path / "demo", demo, sizes=3)
    assert not (tmp_path / "demo").exists()  # nothing written before the parameters are known to be right


def test_concurrent_runs_sharing_a_folder_write_once(tmp_path):
    writer = CountingWriter(pause_s=0.3)
    demo = DemoWriter("counting", writer)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_datalist("", tmp_path, demo, items=4)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(writer.calls) == 1 and results == [str(tmp_path / "datalist.json")] * 3


def test_under_torch_distributed_only_rank_0_writes(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "broadcast_from_main", lambda value: sent.append(value) or received[0])
    writer = CountingWriter()
    demo = DemoWriter("counting", writer)
    received = [None]
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert resolve_datalist("", tmp_path, demo) == str(tmp_path / "datalist.json") and writer.calls == []
    received = ["OSError: disk full"]  # rank 0 failed: the others stop with its message instead of waiting
    with pytest.raises(RuntimeError, match="rank 0 could not write the demo data.*disk full"):
        resolve_datalist("", tmp_path, demo)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    received, sent[:] = [None], []
    resolve_datalist("", tmp_path, demo)
    assert len(writer.calls) == 1 and sent == [None]
    sent[:] = []
    with pytest.raises(OSError, match="disk full"):
        resolve_datalist("", tmp_path, DemoWriter("counting", CountingWriter(fail=True)), items=9)
    assert sent == ["OSError: disk full"]


def test_two_gloo_ranks_share_one_demo_folder(tmp_path):
    run_ranks(HERE / "distributed_datalist_worker.py", tmp_path, args=[tmp_path / "demo"], timeout=120)
    assert (tmp_path / "demo" / "writes.log").read_text() == "rank 0\n"
