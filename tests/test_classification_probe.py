"""The linear probe on frozen features that scores a classifier's pretraining (``ClassificationProbe``)."""

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from mri_ssl.engines import AtomicCheckpointer, load_checkpoint
from mri_ssl.errors import InputError
from mri_ssl.metrics import ClassificationProbe
from mri_ssl.metrics.classification_probe import classification_probe_scores, labelled_images

CLASSES = ("a", "b", "c")


def labelled_items(n: int, seed: int, side: int = 6) -> list[dict]:
    """Images whose class is written in their mean brightness (class k: about k), plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    return [{"image": torch.as_tensor(k + 0.1 * rng.standard_normal((1, side, side)), dtype=torch.float32),
             "label": int(k)} for k in labels]


class LabelReader(torch.nn.Module):
    """Features = a one-hot code of the class read from the mean brightness, when ``noise`` is 0; pure noise
    (independent of the image) when ``noise`` is 1. ``forward`` gives ``{"features", "projection"}``."""

    def __init__(self):
        super().__init__()
        self.noise = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
        self.head = torch.nn.Linear(3, 8)  # gives the random-init copy something to reset

    def forward(self, x):
        mean = x.flatten(1).mean(1)
        code = torch.nn.functional.one_hot(mean.round().clamp(0, 2).long(), 3).float()
        generator = torch.Generator().manual_seed(int(1000 * float(mean.sum())) % 2 ** 31)
        noise = torch.randn(code.shape, generator=generator)
        features = code if float(self.noise) == 0 else noise
        return {"features": features, "projection": self.head(features)}


def test_features_that_encode_the_label_score_one_and_noise_scores_chance():
    rng = np.random.default_rng(0)
    fit_labels, labels = np.arange(300) % 3, np.arange(300) % 3
    encoded = torch.nn.functional.one_hot(torch.as_tensor(labels), 3).float() + 0.01 * torch.randn(300, 3)
    fit_encoded = torch.nn.functional.one_hot(torch.as_tensor(fit_labels), 3).float()
    projection = torch.randn(300, 16)
    perfect = classification_probe_scores(fit_encoded, fit_labels, encoded, labels, projection, CLASSES)
    assert perfect["auc"] == pytest.approx(1.0) and perfect["accuracy"] == pytest.approx(1.0)
    assert perfect["score"] == perfect["auc"] and perfect["majority_rate"] == pytest.approx(1 / 3)
    assert perfect["n_fit"] == 300 and perfect["n"] == 300
    assert perfect["spread_healthy"] == pytest.approx(0.25) and perfect["spread"] == pytest.approx(0.25, abs=0.03)
    noise = classification_probe_scores(torch.as_tensor(rng.standard_normal((300, 8))), fit_labels,
                                        torch.as_tensor(rng.standard_normal((300, 8))), labels, projection, CLASSES)
    assert noise["auc"] == pytest.approx(0.5, abs=0.08) and noise["accuracy"] == pytest.approx(1 / 3, abs=0.1)
    collapsed = classification_probe_scores(fit_encoded, fit_labels, encoded, labels, torch.ones(300, 16), CLASSES)
    assert collapsed["spread"] == pytest.approx(0.0, abs=1e-6)


def test_labelled_images_skip_unlabelled_items_and_draw_a_seeded_subset():
    items = labelled_items(12, seed=1)
    items[0]["label"] = -1
    images, labels = labelled_images(items)
    assert images.shape == (11, 1, 6, 6) and list(labels) == [int(i["label"]) for i in items[1:]]
    first, _ = labelled_images(items, max_items=5, seed=3)
    again, _ = labelled_images(items, max_items=5, seed=3)
    assert len(first) <= 5 and torch.equal(first, again)


def test_the_probe_needs_two_classes_in_both_sets():
    probe = ClassificationProbe(labelled_items(6, 0), [dict(labelled_items(1, 1)[0])], CLASSES)
    with pytest.raises(InputError, match="validation split"):
        probe.measure(LabelReader())
    with pytest.raises(InputError, match="class_names"):
        ClassificationProbe([], [], ["only"])


def test_the_probe_runs_at_step_0_and_best_pt_follows_it(tmp_path):
    network = LabelReader()

    def step(engine, batch):
        # Epoch 1 keeps the label in the features, epoch 2 replaces them with noise, epoch 3 brings them back:
        # the probe must rank epoch 1 (or 3) above epoch 2, and best.pt must hold weights with noise == 0.
        network.noise.fill_(1.0 if engine.state.epoch == 2 else 0.0)
        return {"loss": torch.tensor(float(engine.state.epoch))}

    engine = Engine(step)
    engine.network = network
    engine.state.device = torch.device("cpu")
    probe = ClassificationProbe(labelled_items(60, 0), labelled_items(30, 1), CLASSES, log_dir=tmp_path / "tb",
                                history_path=tmp_path / "probe.json")
    scores = []
    probe.attach(engine)
    checkpointer = AtomicCheckpointer(tmp_path / "models", network, metric_name="probe_score", mode="max")
    checkpointer.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scores.append(e.state.metrics["probe_score"]))
    engine.run([0], max_epochs=3)

    history = json.loads((tmp_path / "probe.json").read_text())
    assert [h["iteration"] for h in history["history"]] == [0, 1, 2, 3]  # step 0, then every epoch
    assert history["history"][0]["auc"] == pytest.approx(1.0)  # the untrained network already reads the label
    assert history["random_init"]["n"] == 30 and history["random_init"]["n_fit"] == 60
    assert history["history"][2]["train_loss"] == 2.0
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.8
    assert scores == [h["score"] for h in history["history"][1:]]
    best = load_checkpoint(tmp_path / "models" / "best.pt")
    assert best["epoch"] == 1 and best["best_metric"] == pytest.approx(1.0)
    assert float(best["network"]["noise"]) == 0.0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
