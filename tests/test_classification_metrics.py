"""The one ROC-AUC / F1 / accuracy of every classification report, on closed-form cases (and scikit-learn if there)."""

import math

import numpy as np
import pytest

from mri_ssl.metrics.classification import accuracy, classification_metrics, f1_score, roc_auc


def test_roc_auc_closed_form_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8 > 0.4, 0.8 > 0.1, 0.4 = 0.4 -> 1/2, 0.4 > 0.1) = 3.5 / 4
    assert roc_auc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)
    assert roc_auc(np.array([0.1, 0.2, 0.3]), np.array([False, True, True])) == pytest.approx(1.0)
    assert roc_auc(np.array([0.9, 0.2, 0.3]), np.array([0, 1, 1])) == pytest.approx(0.0)
    assert roc_auc(np.full(6, 0.5), np.array([0, 1, 0, 1, 1, 0])) == pytest.approx(0.5)  # all tied: chance


def test_roc_auc_is_nan_with_one_class():
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([0, 0])))
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))


def test_roc_auc_matches_the_mann_whitney_count_and_sklearn():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # rounded: many ties
    labels = rng.random(200) < 0.3
    positive, negative = scores[labels], scores[~labels]
    pairs = (positive[:, None] > negative[None]).sum() + 0.5 * (positive[:, None] == negative[None]).sum()
    expected = pairs / (len(positive) * len(negative))
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    metrics = pytest.importorskip("sklearn.metrics")
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_f1_and_accuracy_closed_form():
    predicted, actual = np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)
    assert f1_score(predicted, actual) == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert f1_score(np.zeros(3, bool), np.zeros(3, bool)) == 0.0  # nothing to find, nothing found
    assert f1_score(actual, actual) == 1.0
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == pytest.approx(0.75)
    assert math.isnan(accuracy(np.array([]), np.array([])))


def test_classification_metrics_closed_cases():
    names = ["A", "B", "C"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[labels] * 0.9 + 0.05
    metrics = classification_metrics(perfect, labels, names)
    assert metrics["mean_auc"] == 1.0 and metrics["accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    inverted = 1.0 - perfect
    assert classification_metrics(inverted, labels, names)["auc"]["A"] == 0.0
    # A class with no positives has no AUC and is left out of the mean.
    missing = classification_metrics(perfect[:4], labels[:4], names)
    assert math.isnan(missing["auc"]["C"]) and missing["mean_auc"] == 1.0
    # Hand-computed AUC: scores 0.1 0.4 | 0.35 0.8 for negatives | positives -> 3 of 4 pairs ordered.
    scores = np.array([[0.1, 0.0], [0.4, 0.0], [0.35, 0.0], [0.8, 0.0]])
    assert classification_metrics(scores, np.array([1, 1, 0, 0]), ["A", "B"])["auc"]["A"] == pytest.approx(0.75)
