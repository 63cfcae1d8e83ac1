"""The video-text retrieval probe: closed-form retrieval cases, chance values, and its wiring in a training run
(start and every epoch in probe.json beside the untrained reference, best.pt chosen on it)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mri_ssl.engines import AtomicCheckpointer, load_checkpoint
from mri_ssl.engines.video_text import (VideoTextTrainer, build_video_text_model, checkpoint_extras,
                                        video_text_optimizer)
from mri_ssl.errors import InputError
from mri_ssl.metrics import RetrievalProbe
from mri_ssl.metrics.retrieval import retrieval_metrics
from mri_ssl.metrics.retrieval_probe import retrieval_probe_scores, rsum_chance
from mri_ssl.text.tokenizer import WordTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

REPORTS = ["the left ventricle is dilated", "normal size and function", "late enhancement of the septum",
           "thin walls and low ejection fraction"]
CONFIG = {"embed_dim": 16, "seed": 0, "video_config": {"cnn_features": [4, 8], "temporal_layers": 1,
                                                       "temporal_heads": 2},
          "text_config": {"width": 8, "layers": 1, "heads": 2}}


def test_identity_embeddings_retrieve_every_pair_first():
    n = 20
    embeddings = torch.eye(n)
    scores = retrieval_probe_scores(embeddings, embeddings, clip_loss=0.0)
    for direction in ("t2v", "v2t"):
        assert scores[f"{direction}_R@1"] == 100.0 and scores[f"{direction}_MdR"] == 1.0
    assert scores["RSUM"] == scores["score"] == 600.0 and scores["n"] == n
    assert scores["clip_loss_chance"] == pytest.approx(math.log(n))


def test_random_embeddings_score_about_k_over_n():
    n = 2000
    g = torch.Generator().manual_seed(0)
    metrics = retrieval_metrics(torch.randn(n, 64, generator=g) @ torch.randn(n, 64, generator=g).T)
    for k in (1, 5, 10, 50):
        # binomial standard error of a share of n queries: sqrt(p (1 - p) / n), 4 of them allowed
        tolerance = 4 * 100 * math.sqrt(k / n * (1 - k / n) / n)
        for direction in ("t2v", "v2t"):
            assert metrics[f"{direction}_R@{k}"] == pytest.approx(100.0 * k / n, abs=tolerance)
    assert metrics["RSUM"] == pytest.approx(rsum_chance(n), rel=0.35)


def test_rsum_chance_closed_form():
    assert rsum_chance(100) == pytest.approx(2 * (1 + 5 + 10))
    assert rsum_chance(12) == pytest.approx(2 * 100 * (1 + 5 + 10) / 12)
    assert rsum_chance(4) == pytest.approx(2 * 100 * (1 + 4 + 4) / 4)  # K >= N: every query counts
    with pytest.raises(InputError, match="embeddings"):
        retrieval_probe_scores(torch.eye(3), torch.eye(4)[:, :3][:2], clip_loss=0.0)


def pairs(count: int, seed: int, tokenizer: WordTokenizer) -> list[dict]:
    """Pairs whose video brightness follows the report: retrieval the model can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        report = index % len(REPORTS)
        video = 0.2 * torch.rand(4, 1, 16, 16, generator=g) + report / len(REPORTS)
        items.append({"video": video, "ids": tokenizer(REPORTS[report])[0]})
    return items


def test_probe_in_a_run_writes_start_and_epochs_and_best_pt_follows_it(tmp_path):
    tokenizer = WordTokenizer.build(REPORTS, max_length=8)
    model = build_video_text_model(tokenizer, **CONFIG)
    reference = build_video_text_model(tokenizer, **{**CONFIG, "seed": 999})
    optimizer = video_text_optimizer(model, 3e-3, 0.05)
    loader = DataLoader(pairs(16, 1, tokenizer), batch_size=4, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    held_out = pairs(8, 2, tokenizer)
    trainer = VideoTextTrainer("cpu", 4, loader, model, optimizer, val_data_loader=DataLoader(held_out, batch_size=8),
                               seed=0)
    probe = RetrievalProbe(held_out, reference_network=reference, history_path=tmp_path / "probe.json",
                           batch_size=4)
    probe.attach(trainer)
    checkpointer = AtomicCheckpointer(tmp_path, model, optimizer, metric_name="probe_score", mode="max",
                                      export_encoder=False, extra_state=checkpoint_extras(tokenizer, CONFIG))
    checkpointer.attach(trainer)
    trainer.run()

    written = json.loads((tmp_path / "probe.json").read_text())
    history = written["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4] and history[0]["iteration"] == 0
    assert written["random_init"]["n"] == 8 and written["random_init"]["clip_loss_chance"] == pytest.approx(
        math.log(8))
    # the untrained reference is the other-seed network, never trained: its scores are its own
    assert written["random_init"]["clip_loss"] != pytest.approx(history[0]["clip_loss"])
    for record in history[1:]:
        # the validation split is one batch of all 8 pairs: the trainer's val_loss is the probe's CLIP loss
        assert record["val_loss"] == pytest.approx(record["clip_loss"], rel=1e-5)
        assert "train_loss" in record and 0 <= record["RSUM"] <= 600
    best_epoch = 1 + int(np.argmax([h["score"] for h in history[1:]]))  # first of equals, as the checkpointer
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch
    assert trainer.state.metrics["probe_score"] == history[-1]["score"]
