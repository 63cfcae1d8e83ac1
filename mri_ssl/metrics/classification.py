"""Classification scores every report shares: ROC-AUC, F1, accuracy and the per-class summary of a classifier.

* ROC-AUC is MONAI's ``compute_roc_auc``: the probability that a random positive scores above a random negative,
  ties counting 1/2 (the Mann-Whitney U statistic over ``n_pos * n_neg``). It is undefined (NaN here, where MONAI
  would warn) when the labels hold only one class.
* F1 of the positive class is ``2 TP / (2 TP + FP + FN)``, 0 when nothing is predicted or present positive.
* Accuracy is the fraction of equal predictions and labels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of ``scores`` (N,) against binary ``labels`` (N,) (bool or 0/1); NaN without both classes."""
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(np.asarray(scores, dtype=np.float64).ravel()),
                                 torch.as_tensor(labels.astype(np.float64))))


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class of binary ``predicted`` against binary ``labels``; 0 when both have no positive."""
    predicted, labels = np.asarray(predicted).astype(bool).ravel(), np.asarray(labels).astype(bool).ravel()
    true_positive = np.logical_and(predicted, labels).sum()
    denominator = predicted.sum() + labels.sum()  # = 2 TP + FP + FN
    return 0.0 if denominator == 0 else float(2.0 * true_positive / denominator)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``predicted`` equal to ``labels``; NaN for no cases."""
    predicted, labels = np.asarray(predicted).ravel(), np.asarray(labels).ravel()
    return float(np.mean(predicted == labels)) if len(labels) else float("nan")


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class (one-vs-rest) and mean ROC-AUC, accuracy of the arg-max class and the confusion matrix (rows the
    true class) of ``(N, K)`` probabilities against ``(N,)`` integer labels. The mean AUC skips undefined classes."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    per_class = {name: roc_auc(probabilities[:, k], labels == k) for k, name in enumerate(class_names)}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "images": int(len(labels)),
        "auc": per_class,
        "mean_auc": float(np.mean(defined)) if defined else float("nan"),
        "accuracy": accuracy(predicted, labels),
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }
