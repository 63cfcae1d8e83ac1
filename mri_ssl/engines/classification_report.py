"""Evaluation report of a sequence classifier: per-class and mean ROC-AUC, accuracy, a confusion matrix PNG.

Attached to a MONAI ``SupervisedEvaluator`` whose postprocessing turns logits into per-class probabilities
(sigmoid, for the per-class BCE). It collects every item's probabilities, one-hot label and identifiers, then writes
into ``output_dir``:

- ``metrics.json``: per-class AUC (``mri_ssl.metrics.classification``; NaN for a class absent from the labels, or always
  present), mean AUC over the classes that have one, accuracy of the arg-max class, confusion matrix;
- ``predictions.csv``: one row per image (file, subject, series, true and predicted class, probabilities);
- ``confusion_matrix.png``: rows the true class, columns the predicted one, counts and row-normalised shading.

The numbers also land in ``engine.state.metrics`` (``mean_auc``, ``accuracy``, ``auc_<class>``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine

from mri_ssl.engines.report_handler import EvaluationReport, source_name
from mri_ssl.io.atomic import atomic_output, atomic_write_text
from mri_ssl.metrics.classification import classification_metrics

logger = logging.getLogger(__name__)

ID_KEYS = ("subject", "series", "sequence")


def save_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    figure, axis = plt.subplots(figsize=(1.1 * len(class_names) + 1.5, 1.1 * len(class_names) + 1.0))
    axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            axis.text(j, i, str(confusion[i, j]), ha="center", va="center",
                      color="white" if normalised[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(class_names)), class_names)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return Path(path)


class ClassificationReport(EvaluationReport):
    """Collects an evaluator's outputs and writes the report (see the module docstring).

    Args:
        output_dir: where the files go.
        class_names: the classifier's classes in output order.
        pred_key, label_key, image_key: keys of the decollated evaluator output.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str], pred_key: str = "pred",
                 label_key: str = "label", image_key: str = "image"):
        super().__init__(output_dir)
        self.class_names = list(class_names)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key

    def collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            probabilities = torch.as_tensor(item[self.pred_key]).detach().float().cpu().flatten().numpy()
            label = int(torch.as_tensor(item[self.label_key]).detach().cpu().flatten().argmax())
            self.rows.append({"file": source_name(item.get(self.image_key)),
                              **{k: str(item.get(k, "")) for k in ID_KEYS}, "label": label,
                              "probabilities": probabilities})

    def write(self, engine: Engine) -> dict:
        probabilities = np.stack([row["probabilities"] for row in self.rows]) if self.rows else \
            np.zeros((0, len(self.class_names)))
        labels = np.array([row["label"] for row in self.rows], dtype=np.int64)
        metrics = classification_metrics(probabilities, labels, self.class_names)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", *ID_KEYS, "true_class", "predicted_class",
                         *[f"p_{name}" for name in self.class_names]])
        for row, p in zip(self.rows, probabilities):
            writer.writerow([row["file"], *[row[k] for k in ID_KEYS], self.class_names[row["label"]],
                             self.class_names[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])
        atomic_write_text(self.output_dir / "predictions.csv", buffer.getvalue())
        save_confusion_matrix(np.array(metrics["confusion_matrix"]), self.class_names,
                              self.output_dir / "confusion_matrix.png",
                              title=f"mean AUC {metrics['mean_auc']:.3f}, accuracy {metrics['accuracy']:.3f}, "
                                    f"n = {metrics['images']}")
        engine.state.metrics["mean_auc"] = metrics["mean_auc"]
        engine.state.metrics["accuracy"] = metrics["accuracy"]
        for name, value in metrics["auc"].items():
            engine.state.metrics[f"auc_{name}"] = value
        table = "  ".join(f"{name} {value:.4f}" for name, value in metrics["auc"].items())
        logger.info("AUC per class: %s; mean AUC %.4f; accuracy %.4f (%d images); report in %s", table,
                    metrics["mean_auc"], metrics["accuracy"], metrics["images"], self.output_dir)
        print(f"mean AUC {metrics['mean_auc']:.4f}  accuracy {metrics['accuracy']:.4f}  ({metrics['images']} images)"
              f"  per class: {table}")
        return metrics
