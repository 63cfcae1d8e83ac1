"""The event wiring every evaluation report shares: collect rows while a MONAI evaluator runs, write when it completes.

``SegmentationReport`` / ``DenoisingReport`` (per case, ``mri_ssl.engines.reports``), ``ClassificationReport``
(per image, ``mri_ssl.engines.classification_report``) and ``FundusEvaluationReport`` (a scorer's running sums,
``mri_ssl.engines.fundus_evaluation``) differ in what they gather and write, not in when.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

from ignite.engine import Engine, Events


def source_name(image) -> str:
    """The file an item's image was loaded from (a MetaTensor's ``filename_or_obj``); "" when it does not say."""
    return str(getattr(image, "meta", {}).get("filename_or_obj", "")) if image is not None else ""


class EvaluationReport(ABC):
    """Base of the report handlers: ``rows`` emptied when the evaluator starts, ``collect`` after every iteration,
    ``write`` when it completes. Subclasses define ``collect`` (append to ``self.rows``) and ``write``.

    Args:
        output_dir: where the report files go.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows = []

    @abstractmethod
    def collect(self, engine: Engine) -> None:
        """Take the finished iteration's items (``engine.state.batch`` / ``engine.state.output``)."""

    @abstractmethod
    def write(self, engine: Engine):
        """Write the report from what ``collect`` gathered."""
