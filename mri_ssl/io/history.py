"""The records a resumed run keeps from its history file.

Training handlers write their per-epoch or per-validation records to a JSON file ``{"history": [record, ...]}``
(``logs/probe.json``, ``history.json``). A run resumed from a checkpoint continues that file: it keeps the records
from before the point it resumes at and drops the later ones, which belonged to a run that went further before it
stopped and will be measured again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def records_before(path: str | os.PathLike | None, counter: str, resumed_at: int) -> list[dict]:
    """The records of the history file ``path`` whose ``counter`` (e.g. ``"epoch"``, ``"iteration"``) is below
    ``resumed_at``. No file (or ``path`` None) gives an empty list; an unreadable file is logged and gives an empty
    list too, so the run starts a new history instead of failing after its checkpoint was restored."""
    if path is None or not Path(path).is_file():
        return []
    try:
        records = json.loads(Path(path).read_text())["history"]
        return [record for record in records
                if isinstance(record, dict) and int(record.get(counter, resumed_at)) < resumed_at]
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("cannot read the history %s to continue it (%s); a new history starts at %s %d",
                       path, error, counter, resumed_at)
        return []
