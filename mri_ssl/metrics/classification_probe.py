"""The representation probe for an image classifier's pretraining: a linear probe on frozen features.

The pretraining itself uses no labels; the probe asks whether its features already separate the classes. The
encoder embeds a fixed set of labelled training images (the probe's fit set) and the held-out validation images
(never the test split); a multinomial logistic regression (``mri_ssl.metrics.linear_probe``) is fitted on the first
and scored on the second:

- **macro ROC-AUC** (one-vs-rest, mean over classes: ``score``, what a run's ``best.pt`` is chosen on) and
  **accuracy** of the arg-max class, beside the majority-class rate;
- **projection spread** of the validation images (``projection_spread``): near ``1/sqrt(dim)`` for spread-out
  projections, 0 for a collapsed encoder.

``ClassificationProbe`` runs it in a trainer (``ProbeHandler``): at the start (the untrained encoder) beside a
randomly re-initialised network of the same shape, then every ``interval`` epochs; into ``engine.state.metrics``
(``probe_*``), TensorBoard and a JSON history.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch

from mri_ssl.errors import InputError
from mri_ssl.metrics.linear_probe import linear_probe
from mri_ssl.metrics.representation_probe import ProbeHandler, embed_images, projection_spread


def drawn_indices(n: int, max_items: int | None = None, seed: int = 0) -> np.ndarray:
    """``0..n-1``, or a sorted seeded draw of ``max_items`` of them (without replacement) when there are more."""
    indices = np.arange(int(n))
    if max_items is not None and len(indices) > int(max_items):
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), int(max_items), replace=False))
    return indices


def labelled_images(data: Sequence[Mapping], image_key: str = "image", label_key: str = "label",
                    max_items: int | None = None, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """``(images (N, C, ...), labels (N,))`` of the items with a label >= 0 (unlabelled ones carry -1).

    With ``max_items``, at most that many items are drawn (without replacement, with ``seed``) before any is loaded,
    so a lazy dataset of a large split reads only those.
    """
    items = [data[int(i)] for i in drawn_indices(len(data), max_items, seed)]
    items = [item for item in items if int(item.get(label_key, -1)) >= 0]
    if not items:
        return torch.empty(0), np.empty(0, dtype=np.int64)
    images = torch.stack([torch.as_tensor(item[image_key]).float() for item in items])
    return images, np.array([int(item[label_key]) for item in items], dtype=np.int64)


def classification_probe_scores(fit_features: torch.Tensor, fit_labels: np.ndarray, features: torch.Tensor,
                                labels: np.ndarray, projection: torch.Tensor, class_names: Sequence[str],
                                l2: float = 1e-2) -> dict[str, float]:
    """The probe's figures: a linear probe fitted on ``fit_features`` and scored on ``features``.

    Returns ``auc`` (macro ROC-AUC; NaN classes left out), ``accuracy``, ``majority_rate`` (the accuracy of always
    answering the held-out set's most frequent class), ``spread`` and ``spread_healthy`` (``1/sqrt(dim)``) of
    ``projection`` (the held-out images'), ``score`` (= ``auc``), ``n_fit`` and ``n``.
    """
    result = linear_probe(fit_features.numpy(), fit_labels, features.numpy(), labels, list(class_names), l2)
    return {"auc": result["macro_auc"], "accuracy": result["accuracy"],
            "majority_rate": float(np.bincount(labels).max() / len(labels)),
            "spread": projection_spread(projection), "spread_healthy": float(projection.shape[1]) ** -0.5,
            "score": result["macro_auc"], "n_fit": int(len(fit_labels)), "n": int(len(labels))}


class ClassificationProbe(ProbeHandler):
    """A linear probe on the network's frozen features, in a trainer (see the module docstring).

    Args:
        fit_data: labelled items to fit the probe on (dicts with ``image_key`` channel-first tensors and
            ``label_key`` class indices, -1 = unlabelled and skipped), e.g. a ``CacheDataset`` of the training split.
        data: the held-out labelled items it is scored on: the validation split, never the test split.
        class_names: the classes, in label order.
        max_fit_items: at most this many fit items, a seeded draw (the probe's cost stays bounded on large data).
        l2: the logistic regression's L2 penalty on standardised features.
        seed: fixes the draw of fit items.
        random_init_seed, interval, log_dir, history_path: as ``ProbeHandler``.
        batch_size: images per forward pass.

    The network's output gives the features: ``output["features"]`` (and ``output["projection"]`` for the spread),
    or one tensor used as both.
    """

    def __init__(self, fit_data: Sequence[Mapping], data: Sequence[Mapping], class_names: Sequence[str],
                 image_key: str = "image", label_key: str = "label", max_fit_items: int | None = 2000,
                 l2: float = 1e-2, seed: int = 0, random_init_seed: int = 999, interval: int = 1,
                 log_dir: str | os.PathLike | None = None, history_path: str | os.PathLike | None = None,
                 batch_size: int = 64):
        super().__init__(random_init_seed, interval, log_dir, history_path)
        if len(class_names) < 2:
            raise InputError("class_names", f"the probe needs at least 2 classes, got {list(class_names)}")
        if max_fit_items is not None and int(max_fit_items) < 2:
            raise InputError("max_fit_items", f"must be >= 2 or None, got {max_fit_items}")
        self.fit_data, self.data = fit_data, data
        self.class_names = tuple(class_names)
        self.image_key, self.label_key = image_key, label_key
        self.max_fit_items = None if max_fit_items is None else int(max_fit_items)
        self.l2, self.seed, self.batch_size = float(l2), int(seed), int(batch_size)
        self.sets: tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray]] | None = None

    def item_indices(self, n: int, fit: bool) -> np.ndarray:
        """The items of a set of ``n`` the probe reads: the fit set's seeded draw of ``max_fit_items``, all held-out
        items."""
        return drawn_indices(n, self.max_fit_items if fit else None, self.seed)

    def labelled_set(self, data: Sequence[Mapping], fit: bool) -> tuple[torch.Tensor, np.ndarray]:
        """``(inputs (N, C, ...), labels (N,))`` of one set (``fit``: the fit set): here the labelled images
        themselves; a subclass may derive other inputs from them (``LesionPatchProbe``: crops)."""
        return labelled_images(data, self.image_key, self.label_key, self.max_fit_items if fit else None, self.seed)

    def build_sets(self) -> tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray]]:
        """``((fit inputs, labels), (held-out inputs, labels))``, made once and kept."""
        if self.sets is None:
            fit = self.labelled_set(self.fit_data, fit=True)
            held_out = self.labelled_set(self.data, fit=False)
            named = (("fit data (training split)", fit), ("held-out data (validation split)", held_out))
            for name, (_, labels) in named:
                if len(np.unique(labels)) < 2:
                    raise InputError("probe " + name, f"needs labelled inputs of at least 2 classes, got "
                                                      f"{len(labels)} inputs of classes {sorted(set(labels))}")
            self.sets = (fit, held_out)
        return self.sets

    def measure(self, network: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """The probe's scores for ``network`` (a DDP wrapper is unwrapped)."""
        (fit_images, fit_labels), (images, labels) = self.build_sets()
        network = getattr(network, "module", network)
        device = torch.device(device)
        fit_features, _ = embed_images(network, fit_images, device, self.batch_size)
        features, projection = embed_images(network, images, device, self.batch_size)
        return classification_probe_scores(fit_features, fit_labels, features, labels, projection, self.class_names,
                                           self.l2)

    def describe(self, s: Mapping[str, float], r: Mapping[str, float]) -> str:
        return (f"linear probe on frozen features (fit on {s['n_fit']}, scored on {s['n']} held-out images): "
                f"macro AUC {s['auc']:.4f} (random init {r['auc']:.4f}), accuracy {s['accuracy']:.4f} (random "
                f"init {r['accuracy']:.4f}, majority class {s['majority_rate']:.4f}); projection spread "
                f"{s['spread']:.4f} (healthy {s['spread_healthy']:.4f})")


__all__ = ["ClassificationProbe", "classification_probe_scores", "drawn_indices", "labelled_images"]
