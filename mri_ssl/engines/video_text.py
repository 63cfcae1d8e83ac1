"""Training and evaluation of the CMR video-text model (``mri_ssl.networks.video_text``).

``VideoTextTrainer`` is an ignite/MONAI ``Trainer``: AdamW over ``weight_decay_groups`` (no decay on the logit scale,
norms, biases), the scale clamped after every step, the CLIP loss on each batch (gathered across ranks under
torch.distributed), the validation CLIP loss at every epoch end in ``state.metrics["val_loss"]`` and the per-epoch
history in ``history.json``. Checkpoints come from ``mri_ssl.engines.AtomicCheckpointer`` like the other bundles
(``latest.pt`` / ``best.pt`` / ``final.pt``, atomic, resumable with ``resume``), with ``checkpoint_extras`` (model
config and tokenizer) added so ``load_video_text_model`` rebuilds the model from the file alone.

Distributed runs: every rank must issue the same collectives in the same order, or one waits forever. Training
batches are equal per rank (``DistributedSampler(drop_last=True)`` + ``drop_last=True``; checked once at the start,
so a custom sampler that breaks this is an error, not a hang); validation runs on every rank over the whole
validation set with the *unwrapped* model and no gathering, so it has no collectives at all and gives the same value
as a single-process run; files are written by rank 0 only, with no collective inside.

``VideoTextEvaluator.run()``: embeds a split (frames in evaluation mode), ranks reports for every study and studies
for every report (``mri_ssl.metrics.retrieval``), linear-probes frozen video features (training split -> test
split) for the disease labels, and writes ``retrieval.csv/.md``, ``linear_probe.csv/.md``, ``metrics.json`` and an
``embedding_pca.png`` coloured by disease. The same evaluation of the untrained, identically seeded model is the
"zero-shot (untrained)" reference row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines import Trainer
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys
from torch.utils.data import DataLoader

from mri_ssl.data.cardiac.cmr_studies import DISEASE_LABELS
from mri_ssl.distributed import is_main_process, rank, world_size
from mri_ssl.io.weights import load_checkpoint, load_network_weights
from mri_ssl.engines.clipping import backward_and_step
from mri_ssl.engines.guards import check_loss
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output, atomic_write_text, save_json
from mri_ssl.engines.schedules import weight_decay_groups
from mri_ssl.metrics.linear_probe import linear_probe
from mri_ssl.metrics.retrieval import retrieval_metrics
from mri_ssl.networks.video_text import VideoTextModel
from mri_ssl.text.pretrained import PretrainedTokenizer
from mri_ssl.text.tokenizer import WordTokenizer

logger = logging.getLogger(__name__)
RETRIEVAL_COLUMNS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_R@50", "t2v_MdR", "t2v_MnR",
                     "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_R@50", "v2t_MdR", "v2t_MnR", "RSUM")


def build_video_text_model(tokenizer, embed_dim: int = 512, video_config: dict | None = None,
                           text_config: dict | None = None, seed: int = 0) -> VideoTextModel:
    """The model with weights drawn from ``seed`` (the untrained zero-shot reference uses the same seed).

    ``tokenizer`` is a ``WordTokenizer`` (text transformer trained from scratch) or a ``PretrainedTokenizer``
    (``text_config["pretrained_dir"]``: a local Hugging Face model directory, see ``mri_ssl.text.pretrained``).
    """
    torch.manual_seed(int(seed))
    text_config = {**(text_config or {}), "max_length": tokenizer.max_length}
    if text_config.get("pretrained_dir"):
        text_config["pad_token_id"] = tokenizer.pad_id
    return VideoTextModel(len(tokenizer), embed_dim, dict(video_config or {}), text_config)


def build_text_tokenizer(training_reports, max_length: int = 64, text_model_dir: str | os.PathLike | None = None):
    """The report tokenizer: built from the training reports, or the local pretrained model's own when
    ``text_model_dir`` is given (then ``training_reports`` are not used)."""
    if text_model_dir:
        return PretrainedTokenizer(text_model_dir, max_length)
    return WordTokenizer.build(training_reports, max_length=max_length)


def video_text_optimizer(model: torch.nn.Module, learning_rate: float = 1e-4, weight_decay: float = 0.05):
    """AdamW with no decay on the logit scale, norms and biases; the scale is clamped after each step."""
    optimizer = torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=float(learning_rate))
    _unwrap(model).loss.clamp_after_steps(optimizer)
    return optimizer


def checkpoint_extras(tokenizer, model_config: dict) -> dict:
    """What ``AtomicCheckpointer`` adds to every checkpoint so ``load_video_text_model`` can rebuild the model."""
    return {"config": dict(model_config), **tokenizer_state(tokenizer)}


def tokenizer_state(tokenizer) -> dict:
    """Plain data that rebuilds ``tokenizer`` (a word vocabulary, or the local pretrained model directory)."""
    if isinstance(tokenizer, WordTokenizer):
        return {"vocabulary": tokenizer.vocabulary, "max_length": tokenizer.max_length}
    return {"text_model_dir": str(tokenizer.model_dir), "max_length": tokenizer.max_length}


def load_tokenizer(path: str | os.PathLike):
    """The word tokenizer saved by ``WordTokenizer.save`` (a ``.json`` file, e.g. the ``models/tokenizer.json`` a
    bundle ships beside its plain state dict: the vocabulary fixes the text embedding's size), or the tokenizer a
    trainer checkpoint carries."""
    path = Path(path)
    if path.suffix == ".json":
        return WordTokenizer.load(path)
    payload = load_checkpoint(path)
    if not isinstance(payload, dict):
        raise InputError(path, "not a video-text checkpoint (no tokenizer in it)")
    return tokenizer_from_state(payload, path)


def tokenizer_from_state(payload: dict, source="checkpoint"):
    if payload.get("text_model_dir"):
        return PretrainedTokenizer(payload["text_model_dir"], payload["max_length"])
    missing = [k for k in ("vocabulary", "max_length") if k not in payload]
    if missing:
        raise InputError(str(source), f"not a video-text checkpoint (missing {missing})")
    return WordTokenizer(payload["vocabulary"], payload["max_length"])


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class VideoTextTrainer(Trainer):
    """Ignite/MONAI trainer of the video-text model with the CLIP loss (see the module docstring).

    Args:
        device, max_epochs: as MONAI's trainers.
        train_data_loader: yields ``{"video": (B, T, 1, H, W), "ids": (B, L), ...}`` (``CMRVideoTextDataset``).
        network: a ``VideoTextModel``, or a DistributedDataParallel-wrapped one.
        optimizer: from ``video_text_optimizer``.
        val_data_loader: the validation split; its CLIP loss (no gathering, batches of one pair skipped: their
            loss is 0 whatever the model) is ``state.metrics["val_loss"]`` at every epoch end. None: no validation.
        history_path: ``history.json`` (rank 0 writes it at every epoch end: epoch, train_loss, val_loss,
            logit_scale, and the world size); a resumed run keeps the records of the epochs it resumes after.
        grad_clip_norm: gradient-norm clipping; None or 0 disables.
        seed: every epoch restarts the loader shuffle (when the loader has a generator), the frame sampling of the
            dataset and torch's RNG from ``seed + epoch``, so a run resumed from ``latest.pt`` continues exactly as
            an uninterrupted one would (with ``num_workers=0``). None leaves the RNGs alone.
        inferer: runs ``network(video, ids)`` (``train#inferer``); default ``SimpleInferer``.
        train_handlers, amp, epoch_length: as MONAI's trainers (amp on CUDA only; the loss stays float32).
    """

    def __init__(self, device, max_epochs: int, train_data_loader, network, optimizer, val_data_loader=None,
                 history_path=None, grad_clip_norm: float | None = 1.0, seed: int | None = 0, inferer=None,
                 train_handlers=None, amp: bool = False, epoch_length: int | None = None):
        if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
            raise InputError("max_epochs", f"expected at least 1 epoch, got {max_epochs!r}")
        if grad_clip_norm is not None and not grad_clip_norm >= 0:
            raise InputError("grad_clip_norm", f"must be >= 0 or None, got {grad_clip_norm}")
        if len(train_data_loader) == 0:
            raise InputError("batch_size", f"the training split gives no full batch "
                                           f"({len(train_data_loader.dataset)} studies over {world_size()} "
                                           f"process(es)); lower batch_size")
        batch_size = getattr(train_data_loader, "batch_size", None)
        sampler = getattr(train_data_loader, "sampler", None)
        if (world_size() > 1 and batch_size and sampler is not None and not train_data_loader.drop_last
                and len(sampler) % batch_size):
            # the gathered CLIP loss needs the same batch size on every rank, the last one included
            raise InputError("train#dataloader", f"under torch.distributed the last batch would hold "
                                                 f"{len(sampler) % batch_size} of {batch_size} studies; set "
                                                 f"drop_last=True")
        device = torch.device(device)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         epoch_length=epoch_length, handlers=train_handlers, amp=bool(amp) and device.type == "cuda",
                         decollate=False)
        self.network, self.optimizer = network, optimizer
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.val_data_loader, self.grad_clip_norm, self.seed = val_data_loader, grad_clip_norm, seed
        self.history_path = Path(history_path) if history_path else None
        self.history: list[dict] = []
        self._epoch_losses: list[float] = []
        self.add_event_handler(Events.STARTED, self._check_equal_batches_per_rank)
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)

    def _check_equal_batches_per_rank(self, engine: Engine) -> None:
        # One rank with an extra batch would run one more forward/backward (gathers, DDP all-reduces) than the
        # others and wait in it forever: make that an error before the first batch.
        counts = batches_per_rank(engine.state.epoch_length, engine.state.device)
        if len(set(counts)) > 1:
            raise InputError("train#dataloader", f"ranks would run different numbers of batches per epoch "
                                                 f"{counts}; use DistributedSampler(drop_last=True) and "
                                                 f"drop_last=True")

    def _start_epoch(self, engine: Engine) -> None:
        if not self.history and engine.state.epoch > 1:
            self.history = self._earlier_history(engine.state.epoch)
        self._epoch_losses = []
        if self.seed is None:
            return
        epoch_seed = int(self.seed) + int(engine.state.epoch)
        torch.manual_seed(epoch_seed + 100_003 * rank())  # dropout differs between ranks
        loader = engine.state.dataloader
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(epoch_seed)  # same shuffle whether resumed or not
        dataset = getattr(loader, "dataset", None)
        if isinstance(getattr(dataset, "rng", None), np.random.RandomState):
            dataset.rng.seed(epoch_seed + 100_003 * rank())  # frame sampling
        engine.set_data(loader)  # a fresh iterator draws its order from the generator just seeded

    def _earlier_history(self, epoch: int) -> list[dict]:
        """The records of the epochs before ``epoch`` in ``history.json`` (a run resumed after them)."""
        if self.history_path is None or not self.history_path.is_file():
            return []
        try:
            records = json.loads(self.history_path.read_text())["history"]
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("cannot read %s (%s); the history restarts at epoch %d", self.history_path, error, epoch)
            return []
        return [r for r in records if isinstance(r, dict) and r.get("epoch", epoch) < epoch]

    def _iteration(self, engine: Engine, batchdata: dict) -> dict:
        video = batchdata["video"].to(engine.state.device, non_blocking=True)
        ids = batchdata["ids"].to(engine.state.device, non_blocking=True)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(engine.state.device.type, enabled=self.amp):
            out = self.inferer(video, self.network, ids)
        loss = _unwrap(self.network).loss(out["video"], out["text"])  # float32 inside
        check_loss(loss, engine)  # the global loss: the same on every rank, so all stop together
        backward_and_step(loss, self.optimizer, self.network.parameters(), self.grad_clip_norm,
                          self.scaler if self.amp else None)
        self._epoch_losses.append(float(loss.detach()))
        return {CommonKeys.LOSS: float(loss.detach())}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean CLIP loss over the validation pairs, per batch without gathering: no collective on any rank."""
        model = _unwrap(self.network)
        was_training = model.training
        model.eval()
        cpu_rng = torch.get_rng_state()
        total, count = 0.0, 0
        try:
            for batch in self.val_data_loader:
                if len(batch["ids"]) < 2:
                    logger.warning("validation: skipping a batch of one pair (its CLIP loss is 0 for any model)")
                    continue
                out = model(batch["video"].to(self.state.device), batch["ids"].to(self.state.device))
                total += float(model.loss(out["video"], out["text"], gather=False)) * len(batch["ids"])
                count += len(batch["ids"])
        finally:
            torch.set_rng_state(cpu_rng)
            model.train(was_training)
        if count == 0:
            raise InputError("validation", "no validation batch of at least 2 studies; the validation split needs "
                                           ">= 2 studies and batch_size >= 2")
        return total / count

    def _end_epoch(self, engine: Engine) -> None:
        record = {"epoch": int(engine.state.epoch),
                  "train_loss": float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan}
        if self.val_data_loader is not None:
            record["val_loss"] = engine.state.metrics["val_loss"] = self.validation_loss()
        record["logit_scale"] = float(_unwrap(self.network).loss.logit_scale.detach())
        self.history.append(record)
        logger.info("epoch %d: %s", engine.state.epoch, record)
        if self.history_path is not None and is_main_process():
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            save_json({"history": self.history, "world_size": world_size()}, self.history_path)


def batches_per_rank(count: int, device="cpu") -> list[int]:
    """Every rank's ``count`` (one all-gather), rank order; ``[count]`` when not distributed. ``device``: where the
    backend's tensors live (the rank's GPU under NCCL)."""
    if world_size() == 1:
        return [int(count)]
    gathered = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(gathered, torch.tensor([int(count)], device=device))
    return [int(t) for t in gathered]


def load_video_text_model(path: str | os.PathLike, device="cpu") -> tuple[VideoTextModel, object]:
    """Rebuild the model and tokenizer from a trainer checkpoint (``weights_only`` loading; the weights from the
    ``.safetensors`` twin when present)."""
    payload = load_checkpoint(path, map_location=device)
    has_weights = isinstance(payload, dict) and ("network" in payload or "state_dict" in payload)
    if not has_weights or "config" not in payload:
        raise InputError(str(path), "not a video-text checkpoint (missing its network, config or tokenizer)")
    tokenizer = tokenizer_from_state(payload, path)
    model = build_video_text_model(tokenizer, **payload["config"])
    state = load_network_weights(path, device) if "network" in payload else payload["state_dict"]
    model.load_state_dict(state)
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def embed_dataset(model: VideoTextModel, dataset, device, batch_size: int = 16,
                  inferer=None) -> dict[str, np.ndarray]:
    """Video embeddings, text embeddings, frozen video-encoder features and labels of every item (the video encoder
    runs through ``inferer``, a MONAI inferer, when given)."""
    model.eval()
    out = {"video": [], "text": [], "features": [], "label": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        video = batch["video"].to(device)
        features = inferer(video, model.video_encoder) if inferer is not None else model.video_encoder(video)
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
            model, tokenizer = _unwrap(self.network).to(self.device).eval(), self.tokenizer
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
