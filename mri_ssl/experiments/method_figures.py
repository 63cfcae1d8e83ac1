"""Each 2-D method's own figure in its demo (``mri-ssl demo cardiac``): drawn only from what the runs wrote.

- Cardiac sequence classification: the test-split confusion matrix of every column (the evaluation's
  ``logs/evaluation/metrics.json``, ``mri_ssl.engines.ClassificationReport``), counts in the cells.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mri_ssl.experiments.figures import _pyplot, _save
from mri_ssl.experiments.grid import Grid
from mri_ssl.experiments.runner import EVALUATION_DIR, STATUS_OK, RunResult
from mri_ssl.experiments.tables import column_title

CLASSIFICATION_METRICS = "metrics.json"


def read_confusion_matrix(run_folder: str | os.PathLike) -> tuple[np.ndarray, list[str], dict]:
    """``(counts [true, predicted], class names, the whole metrics.json)`` of a classifier run's evaluation.

    Raises ``OSError`` / ``ValueError`` naming the file when it is missing or holds no square matrix of its classes.
    """
    path = Path(run_folder) / EVALUATION_DIR / CLASSIFICATION_METRICS
    metrics = json.loads(path.read_text())
    counts = np.asarray(metrics.get("confusion_matrix"), dtype=np.int64)
    names = list(metrics.get("class_names") or [])
    if counts.ndim != 2 or counts.shape != (len(names), len(names)):
        raise ValueError(f"{path} holds no {len(names)} x {len(names)} confusion matrix of its class_names")
    return counts, names, metrics


def plot_confusion_matrices(results: Sequence[RunResult], grid: Grid, task: str,
                            path: str | os.PathLike) -> Path | None:
    """One confusion matrix per column of ``task`` (first seed, largest label fraction): rows the true class, columns
    the predicted one, the count in each cell, the run's mean AUC and accuracy in the title. None if no run of the
    task finished with a readable matrix."""
    first_seed, fraction = min(grid.seeds), max(grid.label_fractions)
    runs = {r.run.mode: r for r in results if r.run.task == task and r.run.seed == first_seed
            and r.run.fraction == fraction and r.status == STATUS_OK}
    panels = []
    for mode in grid.columns_for(task):
        if mode in runs:
            try:
                panels.append((mode, *read_confusion_matrix(runs[mode].folder)))
            except (OSError, ValueError):
                continue  # a run without a matrix gets no panel; results.md says why it has no number
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False)
    for ax, (mode, counts, names, metrics) in zip(axes[0], panels):
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (row, col), count in np.ndenumerate(counts):
            light = count > counts.max() / 2
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color="white" if light else "black")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{column_title(grid, mode)}\nmean AUC {metrics.get('mean_auc', float('nan')):.3f}, "
                     f"accuracy {metrics.get('accuracy', float('nan')):.3f}", fontsize=8)
    fig.suptitle(f"{task}: test split ({int(panels[0][1].sum())} images), {fraction:.0%} of labels, seed {first_seed}",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
