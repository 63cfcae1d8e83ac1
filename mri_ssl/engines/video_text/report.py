"""The files the video-text evaluation writes: CSV / Markdown tables and the PCA plot of the video embeddings."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from mri_ssl.data.cardiac.cmr_studies import DISEASE_LABELS
from mri_ssl.io.atomic import atomic_output, atomic_write_text


def write_table(rows: list[dict], stem: Path) -> None:
    """``stem.csv`` and ``stem.md`` with the rows' keys as columns (numbers to 2 decimals in Markdown)."""
    columns = list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buffer.getvalue())

    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")


def plot_embedding(embeddings: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """First two principal components of the video embeddings, coloured by disease label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = embeddings - embeddings.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred @ vt[:1].T, np.zeros(len(centred))]
    figure, axes = plt.subplots(figsize=(5, 4))
    for index, name in enumerate(DISEASE_LABELS):
        mask = labels == index
        if mask.any():
            axes.scatter(xy[mask, 0], xy[mask, 1], label=name, s=18)
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title("test-study video embeddings")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
