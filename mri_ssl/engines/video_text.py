"""Training and evaluation of the CMR video-text model (``mri_ssl.networks.video_text``).

``VideoTextTrainer.run()``: AdamW over ``weight_decay_groups`` (no decay on the logit scale, norms, biases), the
scale clamped after every step, the CLIP loss on each batch (gathered across ranks under torch.distributed), the
validation CLIP loss each epoch; checkpoints ``latest.pt`` / ``best.pt`` (lowest validation loss) / ``final.pt``
written atomically with the model config and the tokenizer vocabulary, so ``load_video_text_model`` rebuilds it.

``VideoTextEvaluator.run()``: embeds a split (frames in evaluation mode), ranks reports for every study and studies
for every report (``mri_ssl.metrics.retrieval``), linear-probes frozen video features (training split -> test
split) for the disease labels, and writes ``retrieval.csv/.md``, ``linear_probe.csv/.md``, ``metrics.json`` and an
``embedding_pca.png`` coloured by disease. The same evaluation of the untrained, identically seeded model is the
"zero-shot (untrained)" reference row.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mri_ssl.atomic import atomic_output, atomic_write_text
from mri_ssl.data.cmr_studies import DISEASE_LABELS
from mri_ssl.data.nifti import save_json
from mri_ssl.distributed import is_main_process, world_size
from mri_ssl.engines.checkpoint import load_checkpoint, save_checkpoint
from mri_ssl.errors import InputError
from mri_ssl.losses.clip import weight_decay_groups
from mri_ssl.metrics.linear_probe import linear_probe
from mri_ssl.metrics.retrieval import retrieval_metrics
from mri_ssl.networks.video_text import VideoTextModel
from mri_ssl.text.tokenizer import WordTokenizer

logger = logging.getLogger(__name__)
RETRIEVAL_COLUMNS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_R@50", "t2v_MdR", "t2v_MnR",
                     "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_R@50", "v2t_MdR", "v2t_MnR", "RSUM")


def build_video_text_model(tokenizer: WordTokenizer, embed_dim: int = 512, video_config: dict | None = None,
                           text_config: dict | None = None, seed: int = 0) -> VideoTextModel:
    """The model with weights drawn from ``seed`` (the untrained zero-shot reference uses the same seed)."""
    torch.manual_seed(int(seed))
    text_config = {**(text_config or {}), "max_length": tokenizer.max_length}
    return VideoTextModel(len(tokenizer), embed_dim, dict(video_config or {}), text_config)


def video_text_optimizer(model: torch.nn.Module, learning_rate: float = 1e-4, weight_decay: float = 0.05):
    """AdamW with no decay on the logit scale, norms and biases; the scale is clamped after each step."""
    optimizer = torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=float(learning_rate))
    _unwrap(model).loss.clamp_after_steps(optimizer)
    return optimizer


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class VideoTextTrainer:
    """Plain-torch training loop (see the module docstring); ``run()`` returns the per-epoch history."""

    def __init__(self, network, optimizer, train_loader, val_loader, max_epochs: int, device, ckpt_dir,
                 tokenizer: WordTokenizer, model_config: dict, progress: bool = True, grad_clip_norm: float = 1.0):
        if int(max_epochs) < 1:
            raise InputError("max_epochs", f"expected at least 1 epoch, got {max_epochs}")
        self.network, self.optimizer = network, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.max_epochs, self.device = int(max_epochs), torch.device(device)
        self.ckpt_dir, self.tokenizer, self.model_config = Path(ckpt_dir), tokenizer, dict(model_config)
        self.progress, self.grad_clip_norm = progress and is_main_process(), grad_clip_norm

    def _loss(self, batch) -> torch.Tensor:
        model = _unwrap(self.network)
        out = self.network(batch["video"].to(self.device), batch["ids"].to(self.device))
        return model.loss(out["video"], out["text"])

    def validation_loss(self) -> float:
        self.network.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self.val_loader:
                total += float(self._loss(batch)) * len(batch["ids"])
                count += len(batch["ids"])
        return total / max(count, 1)

    def run(self) -> list[dict]:
        history, best = [], math.inf
        if len(self.train_loader) == 0:
            raise InputError("batch_size", f"the training split gives no full batch ({len(self.train_loader.dataset)} "
                                           f"studies over {world_size()} process(es)); lower batch_size")
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        for epoch in range(1, self.max_epochs + 1):
            if hasattr(getattr(self.train_loader, "sampler", None), "set_epoch"):
                self.train_loader.sampler.set_epoch(epoch)
            self.network.train()
            losses = []
            for batch in tqdm(self.train_loader, desc=f"epoch {epoch}/{self.max_epochs}", disable=not self.progress,
                              leave=False):
                loss = self._loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite CLIP loss at epoch {epoch}; lower the learning rate")
                self.optimizer.zero_grad()
                loss.backward()
                if self.grad_clip_norm:
                    torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
                self.optimizer.step()
                losses.append(loss.item())
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": self.validation_loss(),
                      "logit_scale": _unwrap(self.network).loss.logit_scale.item()}
            history.append(record)
            logger.info("epoch %d: %s", epoch, record)
            if is_main_process():
                self._save("latest.pt", epoch, history)
                if record["val_loss"] < best:
                    best = record["val_loss"]
                    self._save("best.pt", epoch, history)
        if is_main_process():
            self._save("final.pt", self.max_epochs, history)
            save_json({"history": history, "world_size": world_size()}, self.ckpt_dir / "history.json")
        return history

    def _save(self, name: str, epoch: int, history: list[dict]) -> None:
        state = {k: v.detach().cpu() for k, v in _unwrap(self.network).state_dict().items()}
        save_checkpoint({"state_dict": state, "epoch": epoch, "config": self.model_config,
                         "vocabulary": self.tokenizer.vocabulary, "max_length": self.tokenizer.max_length,
                         "history": history}, self.ckpt_dir / name)


def load_video_text_model(path: str | os.PathLike, device="cpu") -> tuple[VideoTextModel, WordTokenizer]:
    """Rebuild the model and tokenizer from a trainer checkpoint (``weights_only`` loading)."""
    payload = load_checkpoint(path, map_location=device)
    missing = [k for k in ("state_dict", "config", "vocabulary", "max_length") if k not in payload]
    if missing:
        raise InputError(str(path), f"not a video-text checkpoint (missing {missing})")
    tokenizer = WordTokenizer(payload["vocabulary"], payload["max_length"])
    model = build_video_text_model(tokenizer, **payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def embed_dataset(model: VideoTextModel, dataset, device, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Video embeddings, text embeddings, frozen video-encoder features and labels of every item."""
    model.eval()
    out = {"video": [], "text": [], "features": [], "label": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        video = batch["video"].to(device)
        features = model.video_encoder(video)
        out["features"].append(features.cpu())
        out["video"].append(torch.nn.functional.normalize(model.video_projection(features), dim=1).cpu())
        out["text"].append(model.embed_text(batch["ids"].to(device)).cpu())
        out["label"].append(torch.as_tensor(batch["label"]))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


class VideoTextEvaluator:
    """Retrieval and linear-probe tables for trained and untrained (zero-shot reference) models."""

    def __init__(self, checkpoint, train_dataset, test_dataset, output_dir, device, run_name: str = "trained",
                 include_untrained: bool = True, seed: int = 0):
        self.checkpoint, self.train_dataset, self.test_dataset = checkpoint, train_dataset, test_dataset
        self.output_dir, self.device = Path(output_dir), torch.device(device)
        self.run_name, self.include_untrained, self.seed = run_name, include_untrained, int(seed)

    def run(self) -> dict:
        model, tokenizer = load_video_text_model(self.checkpoint, self.device)
        payload = load_checkpoint(self.checkpoint)
        models = [(self.run_name, model)]
        if self.include_untrained:
            models.insert(0, ("zero-shot (untrained)", build_video_text_model(tokenizer, **payload["config"]).to(
                self.device)))
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
        save_json({"checkpoint": str(self.checkpoint), "retrieval": retrieval_rows, "linear_probe": probe_rows},
                  self.output_dir / "metrics.json")
        plot_embedding(test["video"], test["label"], self.output_dir / "embedding_pca.png")
        return {"retrieval": retrieval_rows, "linear_probe": probe_rows}


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


class VideoTextInference:
    """Embed studies and rank candidate reports for each (``inference.json``).

    Writes ``embeddings.npz`` (study ids, 512-d video embeddings, report texts, report embeddings) and
    ``rankings.json``: per study the ``top_k`` candidate reports by cosine similarity, best first, with scores.

    Args:
        checkpoint: trainer checkpoint. dataset: a ``CMRVideoTextDataset`` in eval mode (the studies to embed).
        reports: candidate report texts; default the dataset's own reports.
    """

    def __init__(self, checkpoint, dataset, output_dir, device, reports=None, top_k: int = 5):
        self.checkpoint, self.dataset, self.output_dir = checkpoint, dataset, Path(output_dir)
        self.device, self.reports, self.top_k = torch.device(device), reports, int(top_k)

    @torch.no_grad()
    def run(self) -> dict:
        model, tokenizer = load_video_text_model(self.checkpoint, self.device)
        reports = list(self.reports) if self.reports else [s["report"] for s in self.dataset.studies]
        if not reports:
            raise InputError("reports", "no candidate reports to rank")
        embedded = embed_dataset(model, self.dataset, self.device)
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
        save_json({"checkpoint": str(self.checkpoint), "rankings": rankings}, self.output_dir / "rankings.json")
        return rankings
