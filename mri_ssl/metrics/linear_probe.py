"""Linear probing of frozen features: multinomial logistic regression (L2, full-batch L-BFGS in float64 torch),
then accuracy and, per class (one-vs-rest), ROC AUC and F1.

Features are standardised with the training mean and std. AUC (NaN when a class has no positive or no negative
among the test cases) and F1 of the arg-max prediction are those of ``mri_ssl.metrics.classification``.
"""

from __future__ import annotations

import numpy as np
import torch

from mri_ssl.errors import InputError
from mri_ssl.metrics.classification import accuracy, f1_score, roc_auc


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = 1e-2,
                            max_iter: int = 200):
    """Weights (D, C), bias (C,) and the standardisation (mean, std) of a multinomial logistic regression."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise InputError("features", f"expected (N >= 2, D) features with N labels, got {x.shape} and {y.shape}")
    mean, std = x.mean(0), x.std(0) + 1e-8
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weight.detach().numpy(), bias.detach().numpy(), mean, std


def predict_proba(model, features: np.ndarray) -> np.ndarray:
    weight, bias, mean, std = model
    logits = ((np.asarray(features, dtype=np.float64) - mean) / std) @ weight + bias
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def linear_probe(train_features, train_labels, test_features, test_labels, class_names, l2: float = 1e-2) -> dict:
    """Accuracy, per-class AUC and F1 (keys ``auc_<class>``, ``f1_<class>``) and their macro means."""
    model = fit_logistic_regression(train_features, train_labels, len(class_names), l2)
    proba = predict_proba(model, test_features)
    test_labels = np.asarray(test_labels)
    predicted = proba.argmax(1)
    result = {"accuracy": accuracy(predicted, test_labels)}
    for c, name in enumerate(class_names):
        result[f"auc_{name}"] = roc_auc(proba[:, c], test_labels == c)
        result[f"f1_{name}"] = f1_score(predicted == c, test_labels == c)
    result["macro_auc"] = float(np.nanmean([result[f"auc_{n}"] for n in class_names]))
    result["macro_f1"] = float(np.mean([result[f"f1_{n}"] for n in class_names]))
    return result
