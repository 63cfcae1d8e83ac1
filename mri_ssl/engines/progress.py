"""Progress bars for ignite engines: one bar per epoch with the running loss."""

from __future__ import annotations

import sys

from ignite.engine import Engine

from mri_ssl.distributed import is_main_process
from mri_ssl.parameters import as_flag


def attach_progress_bar(engine: Engine, enabled: bool = True) -> Engine:
    """Attach ignite's tqdm bar showing ``loss`` (only on rank 0, and only when ``enabled``); return the engine."""
    if not as_flag(enabled, "progress_bar") or not is_main_process():
        return engine
    from ignite.handlers import ProgressBar

    ProgressBar(persist=True, file=sys.stderr).attach(engine, output_transform=_loss)
    return engine


def _loss(output) -> dict:
    # MONAI engines decollate by default: the output is then a list of per-item dicts, each holding the batch loss.
    if isinstance(output, list) and output and isinstance(output[0], dict):
        output = output[0]
    if isinstance(output, dict) and "loss" in output:
        return {"loss": float(output["loss"])}
    return {}
