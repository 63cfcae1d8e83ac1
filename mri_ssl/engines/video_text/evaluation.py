"""``VideoTextEvaluator``: retrieval and linear-probe tables of a trained model beside the untrained reference.

``run()`` embeds a split (frames in evaluation mode), ranks reports for every study and studies for every report
(``mri_ssl.metrics.retrieval``), linear-probes frozen video features (training split -> test split) for the disease
labels, and writes ``retrieval.csv/.md``, ``linear_probe.csv/.md``, ``metrics.json`` and an ``embedding_pca.png``
coloured by disease. ``metrics.json`` also carries the training run's validation probe (``RetrievalProbe``'s
``probe.json``): its untrained reference, the start, the best epoch (the one ``best.pt`` holds) and the end.
The same evaluation of the untrained, identically seeded model is the "zero-shot (untrained)" reference row.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mri_ssl.data.cardiac.cmr_studies import DISEASE_LABELS
from mri_ssl.engines.video_text.model import build_video_text_model, embed_dataset, load_video_text_model
from mri_ssl.engines.video_text.report import plot_embedding, write_table
from mri_ssl.io.atomic import save_json
from mri_ssl.io.weights import load_checkpoint
from mri_ssl.metrics.linear_probe import linear_probe
from mri_ssl.metrics.representation_probe import probe_milestones
from mri_ssl.metrics.retrieval import retrieval_metrics


class VideoTextEvaluator:
    """Retrieval and linear-probe tables for trained and untrained (zero-shot reference) models."""

    def __init__(self, checkpoint, train_dataset, test_dataset, output_dir, device, run_name: str = "trained",
                 include_untrained: bool = True, seed: int = 0, probe_history=None):
        self.checkpoint, self.train_dataset, self.test_dataset = checkpoint, train_dataset, test_dataset
        self.probe_history = Path(probe_history) if probe_history else None
        self.output_dir, self.device = Path(output_dir), torch.device(device)
        self.run_name, self.include_untrained, self.seed = run_name, include_untrained, int(seed)

    def run(self) -> dict:
        model, tokenizer = load_video_text_model(self.checkpoint, self.device)
        config = load_checkpoint(self.checkpoint)["config"]
        models = [(self.run_name, model)]
        if self.include_untrained:
            models.insert(0, ("zero-shot (untrained)", build_video_text_model(tokenizer, **config).to(self.device)))
        retrieval_rows, probe_rows = [], []
        for name, m in models:
            test = embed_dataset(m, self.test_dataset, self.device)
            train = embed_dataset(m, self.train_dataset, self.device)
            retrieval_rows.append({"model": name, **retrieval_metrics(test["video"] @ test["text"].T)})
            labelled = (train["label"] >= 0).all() and (test["label"] >= 0).all()
            if labelled:
                probe = linear_probe(train["features"], train["label"], test["features"], test["label"],
                                     DISEASE_LABELS)
                probe_rows.append({"model": name, **probe})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_table(retrieval_rows, self.output_dir / "retrieval")
        if probe_rows:
            write_table(probe_rows, self.output_dir / "linear_probe")
        save_json({"checkpoint": str(self.checkpoint), "retrieval": retrieval_rows, "linear_probe": probe_rows,
                   "validation_probe": self._validation_probe()}, self.output_dir / "metrics.json")
        plot_embedding(test["video"], test["label"], self.output_dir / "embedding_pca.png")
        return {"retrieval": retrieval_rows, "linear_probe": probe_rows}

    def _validation_probe(self) -> dict | None:
        """The training run's probe on the validation split: untrained reference, start, best and last records."""
        if self.probe_history is None or not self.probe_history.is_file():
            return None
        return probe_milestones(json.loads(self.probe_history.read_text()))
