"""Progress bars for ignite engines: one bar per epoch with the running loss."""

from __future__ import annotations

import sys

from ignite.engine import Engine

from mri_ssl.distributed import is_main_process
from mri_ssl.engines.checkpoint import as_flag


def attach_progress_bar(engine: Engine, enabled: bool = True) -> Engine:
    """Attach ignite's tqdm bar showing ``loss`` (only on rank 0, and only when ``enabled``); return the engine."""
    if not as_flag(enabled, "progress_bar") or not is_main_process():
        return engine
    from ignite.handlers import ProgressBar

    ProgressBar(persist=True, file=sys.stderr).attach(
        engine, output_transform=lambda output: {"loss": output["loss"]} if isinstance(output, dict) else output)
    return engine
