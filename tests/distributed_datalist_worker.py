"""Worker for the distributed resolver test: ``python tests/distributed_datalist_worker.py DEMO_DIR`` once per rank.

Every rank resolves the demo datalist of one shared folder with a writer that logs which rank wrote; only rank 0
may write, and every rank must get the path of the complete datalist.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mri_ssl.data.datalist import DemoWriter, resolve_datalist
from rank_processes import end_worker, init_from_environment


def write_logged(folder, items: int = 3) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "writes.log", "a") as log:
        log.write(f"rank {os.environ['RANK']}\n")
    (folder / "datalist.json").write_text(json.dumps({"training": list(range(items))}))
    return folder / "datalist.json"


if __name__ == "__main__":
    rank, _ = init_from_environment()
    path = resolve_datalist("", sys.argv[1], DemoWriter("logged", write_logged), items=4)
    assert json.loads(Path(path).read_text())["training"] == [0, 1, 2, 3], f"rank {rank} read an incomplete datalist"
    end_worker()
