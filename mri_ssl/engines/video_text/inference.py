"""``VideoTextInference``: embed studies and rank candidate reports for each (the bundle's ``inference.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mri_ssl.engines.video_text.model import embed_dataset, load_video_text_model, unwrap
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output, save_json


class VideoTextInference:
    """Embed studies and rank candidate reports for each (``inference.json``).

    Writes ``embeddings.npz`` (study ids, 512-d video embeddings, report texts, report embeddings) and
    ``rankings.json``: per study the ``top_k`` candidate reports by cosine similarity, best first, with scores.

    Args:
        checkpoint: a trainer checkpoint to rebuild the model and tokenizer from (``load_video_text_model``); or,
            with ``network`` and ``tokenizer`` given (the standalone ``inference.json``, which builds
            ``network_def`` and loads ``models/model.pt`` into it), only the weights' path written to the rankings.
        dataset: a ``CMRVideoTextDataset`` in eval mode (the studies to embed).
        reports: candidate report texts; default the dataset's own reports.
        inferer: the MONAI inferer that runs the video encoder (default: a direct call).
    """

    def __init__(self, dataset, output_dir, device, checkpoint=None, network=None, tokenizer=None, reports=None,
                 top_k: int = 5, inferer=None):
        if network is None and checkpoint is None:
            raise InputError("checkpoint", "give a trainer checkpoint, or a network and its tokenizer")
        if (network is None) != (tokenizer is None):
            raise InputError("tokenizer", "a network needs its tokenizer (the vocabulary it was trained with)")
        self.checkpoint, self.dataset, self.output_dir = checkpoint, dataset, Path(output_dir)
        self.network, self.tokenizer, self.inferer = network, tokenizer, inferer
        self.device, self.reports, self.top_k = torch.device(device), reports, int(top_k)

    @torch.no_grad()
    def run(self) -> dict:
        if self.network is not None:
            model, tokenizer = unwrap(self.network).to(self.device).eval(), self.tokenizer
        else:
            model, tokenizer = load_video_text_model(self.checkpoint, self.device)
        reports = list(self.reports) if self.reports else [s["report"] for s in self.dataset.studies]
        if not reports:
            raise InputError("reports", "no candidate reports to rank")
        embedded = embed_dataset(model, self.dataset, self.device, inferer=self.inferer)
        report_embeddings = torch.cat([model.embed_text(tokenizer(reports[i:i + 64]).to(self.device)).cpu()
                                       for i in range(0, len(reports), 64)]).numpy()
        similarity = embedded["video"] @ report_embeddings.T
        study_ids = [s["study_id"] for s in self.dataset.studies]
        rankings = {}
        for row, study_id in enumerate(study_ids):
            order = np.argsort(-similarity[row], kind="stable")[:self.top_k]
            rankings[study_id] = [{"rank": r + 1, "score": float(similarity[row, j]), "report": reports[j]}
                                  for r, j in enumerate(order)]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.output_dir / "embeddings.npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, study_ids=np.array(study_ids), video=embedded["video"], reports=np.array(reports),
                         text=report_embeddings)
        checkpoint = str(self.checkpoint) if self.checkpoint is not None else None
        save_json({"checkpoint": checkpoint, "rankings": rankings}, self.output_dir / "rankings.json")
        return rankings
