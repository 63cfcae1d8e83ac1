"""Crash-safe checkpoints: atomic writes, latest / best / final, exact resume, safe loading.

MONAI's CheckpointSaver deletes the old checkpoint before writing the new one, so a failed save leaves nothing
loadable. Here every file is written to a temporary name, fsynced and renamed over the old one, so the previous
checkpoint is replaced only by a complete new one. Checkpoints hold plain state dicts and numbers only, so they load
with ``torch.load(weights_only=True)``, which cannot run code hidden in a pickle (the loaders are in
``mri_ssl.io.weights``, a layer below the networks, which load their own pretrained weights).

Released weights (the network of ``best`` / ``final`` and exported encoders) are also written as safetensors, a format
that holds tensors and string metadata only, and loaders prefer the ``.safetensors`` file beside a ``.pt`` when it is
present. The two files of a pair are two writes, so a kill between them can leave a new ``.pt`` beside the twin of
an earlier save: both carry the same random ``pair_id`` (and the epoch), and a loader that finds them different
warns and reads the ``.pt``, which is always written first and so is the newer one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mri_ssl.distributed import is_main_process
from mri_ssl.engines.guards import NonFiniteWeightsError, non_finite_tensors
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output
from mri_ssl.io.weights import BEST, FINAL, LATEST, PAIR_ID, load_checkpoint, safetensors_path
from mri_ssl.parameters import as_flag

logger = logging.getLogger(__name__)

# Where ``resume`` looks, in order: the end of a finished run (to train further), the last epoch, the best epoch.
RESUME_CHAIN = (FINAL, LATEST, BEST)
ENCODER_BEST, ENCODER_FINAL = "encoder_best.pt", "encoder_final.pt"


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename onto ``path``.

    The file is opened here, not by torch, so a failed write (disk full, no permission) surfaces as the ``OSError``
    behind torch's ``RuntimeError`` and ``atomic_output`` turns it into a ``WriteError`` naming the file.
    """
    with atomic_output(path) as temporary, open(temporary, "wb") as stream:
        torch.save(payload, stream)
    return Path(path)


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict (and string metadata) as safetensors, atomically; tensors are made contiguous on CPU.

    The bytes are serialised in memory and written by Python, so a failed write is an ``OSError`` (a ``WriteError``
    naming the file), not the opaque error of the safetensors writer.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def new_pair_id() -> str:
    """A fresh id for the two files (``.pt`` and ``.safetensors``) of one save."""
    return uuid.uuid4().hex


def export_encoder(encoder: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{"config": encoder.config(), "state_dict": ...}``, what downstream bundles load to rebuild it, and
    the same weights with the config as JSON metadata in a ``.safetensors`` twin."""
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    return save_pair({"config": encoder.config(), "state_dict": state}, state, path,
                     {"config": json.dumps(encoder.config())})


def save_pair(payload: dict[str, Any], weights: dict[str, torch.Tensor], path: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> Path:
    """Write ``payload`` to ``path`` and ``weights`` to its safetensors twin, both stamped with one new ``pair_id``
    (and the payload's epoch, if any), the ``.pt`` first; see ``consistent_twin`` for how a loader uses the stamps."""
    pair_id = new_pair_id()
    written = save_checkpoint({**payload, PAIR_ID: pair_id}, path)
    stamp = {PAIR_ID: pair_id, **({"epoch": str(payload["epoch"])} if "epoch" in payload else {})}
    save_safetensors(weights, safetensors_path(path), metadata={**(metadata or {}), **stamp})
    return written


class AtomicCheckpointer:
    """Keep ``latest.pt`` (every epoch), ``best.pt`` (best ``metric_name``) and ``final.pt`` in ``save_dir``.

    Args:
        save_dir: folder of the checkpoints.
        network: the trained model; its ``encoder`` attribute (if any) is also exported as ``encoder_*.pt``.
        optimizer, lr_scheduler: saved and restored with the network, so a resumed run continues exactly.
        metric_name: ``state.metrics`` key to rank checkpoints by; None keeps no best.
        mode: ``min`` (lower is better, e.g. a loss) or ``max`` (e.g. Dice).
        export_encoder: also write the network's ``encoder`` as ``encoder_best.pt`` / ``encoder_final.pt`` (for
            pretraining; downstream bundles whose encoder is frozen turn it off).
        metric_engine: the engine whose ``state.metrics`` hold ``metric_name`` (e.g. a validation evaluator run by
            MONAI's ``ValidationHandler``); default: the trainer the checkpointer is attached to.
        extra_state: plain data (numbers, strings, lists, dicts) added to every checkpoint, e.g. the model config
            and tokenizer a loader needs to rebuild the network from the file alone.

    ``attach(trainer)`` saves at every epoch end and at completion. ``resume(trainer, path)`` restores a checkpoint
    into the network, optimizer, scheduler and the trainer's epoch / iteration counters before the run starts.
    """

    def __init__(self, save_dir: str | os.PathLike, network: torch.nn.Module, optimizer=None, lr_scheduler=None,
                 metric_name: str | None = "val_loss", mode: str = "min", metric_engine: Engine | None = None,
                 export_encoder: bool = True, extra_state: dict | None = None):
        if mode not in ("min", "max"):
            raise InputError("mode", f"expected 'min' or 'max', got {mode!r}")
        self.save_dir = Path(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.metric_name = metric_name
        self.mode = mode
        self.metric_engine = metric_engine
        self.export_encoder = bool(export_encoder)
        self.extra_state = dict(extra_state or {})
        self.best_metric = math.inf if mode == "min" else -math.inf

    def _improves(self, metric: float) -> bool:
        return metric < self.best_metric if self.mode == "min" else metric > self.best_metric

    def _network(self) -> torch.nn.Module:
        # Unwrap DistributedDataParallel so checkpoints load into a plain model.
        return getattr(self.network, "module", self.network)

    def _encoder(self) -> torch.nn.Module | None:
        return getattr(self._network(), "encoder", None) if self.export_encoder else None

    def state(self, engine: Engine) -> dict[str, Any]:
        payload = {
            **self.extra_state,
            "network": self._network().state_dict(),
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "best_metric": float(self.best_metric),
        }
        if self.optimizer is not None:
            payload["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            payload["lr_scheduler"] = self.lr_scheduler.state_dict()
        return payload

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        if is_main_process():
            self.remove_partial_files()

    def remove_partial_files(self) -> list[Path]:
        """Delete temporary files a killed save left behind (``.latest.*.partial.pt``); the real files are intact."""
        removed = []
        if self.save_dir.is_dir():
            for path in self.save_dir.glob(".*.partial*"):
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            logger.warning("removed %d partial checkpoint file(s) left by an interrupted save: %s", len(removed),
                           ", ".join(p.name for p in removed))
        return removed

    def _save(self, engine: Engine, name: str, twin: bool = False) -> None:
        """Write checkpoint ``name`` and, with ``twin``, its safetensors twin (one stamped pair, ``save_pair``)."""
        # A NaN weight must never replace a finite checkpoint (latest, best or final alike).
        payload = self.state(engine)
        bad = non_finite_tensors(payload["network"])
        if bad:
            raise NonFiniteWeightsError(f"not writing {self.save_dir / name}: weights {bad[:5]} hold NaN or Inf at "
                                        f"epoch {engine.state.epoch}, iteration {engine.state.iteration}; the "
                                        f"checkpoint on disk keeps the last finite weights")
        if twin:
            save_pair(payload, payload["network"], self.save_dir / name)
        else:
            save_checkpoint(payload, self.save_dir / name)

    def epoch_completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        source = self.metric_engine if self.metric_engine is not None else engine
        metric = source.state.metrics.get(self.metric_name) if self.metric_name else None
        if metric is not None and math.isfinite(float(metric)) and self._improves(float(metric)):
            self.best_metric = float(metric)
            self._save(engine, BEST, twin=True)
            encoder = self._encoder()
            if encoder is not None:
                export_encoder(encoder, self.save_dir / ENCODER_BEST)
            logger.info("epoch %d: new best %s = %.5f", engine.state.epoch, self.metric_name, self.best_metric)
        self._save(engine, LATEST)

    def completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        self._save(engine, FINAL, twin=True)
        if self.metric_name and not math.isfinite(self.best_metric) and not (self.save_dir / BEST).is_file():
            logger.warning("no %s written: %s was never computed with a finite value in %d epoch(s) (validation "
                           "runs every val_interval epochs); evaluation that reads %s will fail, use %s instead",
                           BEST, self.metric_name, engine.state.epoch, BEST, self.save_dir / FINAL)
        encoder = self._encoder()
        if encoder is not None:
            export_encoder(encoder, self.save_dir / ENCODER_FINAL)

    def find_resume_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume from: the first of ``RESUME_CHAIN`` (final, latest, best) that loads.

        A file that cannot be loaded is skipped with a warning. A ``final.pt`` older than ``latest.pt`` (written
        before it, or at fewer iterations: left by an earlier, finished run before this one started afresh or
        trained on from it) is skipped too.
        """
        device = next(self._network().parameters()).device
        loaded: dict[str, dict[str, Any]] = {}
        for name in RESUME_CHAIN:
            path = self.save_dir / name
            if not path.is_file():
                continue
            try:
                loaded[name] = load_checkpoint(path, map_location=device)
            except InputError as error:
                logger.warning("cannot resume from %s, trying the next checkpoint: %s", path, error.problem)
        if FINAL in loaded and LATEST in loaded:
            # A finished run writes latest, then final; a final older than latest was left by an earlier run.
            final, latest = self.save_dir / FINAL, self.save_dir / LATEST
            if (loaded[FINAL]["iteration"] < loaded[LATEST]["iteration"]
                    or final.stat().st_mtime_ns < latest.stat().st_mtime_ns):
                logger.warning("%s (iteration %d) is older than %s (iteration %d), left by an earlier run; not using "
                               "it", final, loaded[FINAL]["iteration"], latest, loaded[LATEST]["iteration"])
                del loaded[FINAL]
        for name in RESUME_CHAIN:
            if name in loaded:
                return self.save_dir / name, loaded[name]
        return None

    def resume(self, engine: Engine, path: str | os.PathLike | None = None, when: Any = True) -> Path | None:
        """Restore a checkpoint into the network, optimizer, scheduler and trainer counters; return its path.

        ``path`` None (what the bundles use) follows ``RESUME_CHAIN`` in ``save_dir``: final, then latest, then
        best; when none exists, training starts from scratch with a warning saying so. An explicit ``path`` must
        exist. ``when`` is the bundle's ``resume`` switch (a bool or "true"/"false" from the command line); when it
        is false nothing happens.
        """
        if not as_flag(when, "resume"):
            return None
        if path is None:
            found = self.find_resume_checkpoint()
            if found is None:
                logger.warning("resume requested, but no checkpoint (%s) in %s; training from scratch",
                               ", ".join(RESUME_CHAIN), self.save_dir)
                return None
            path, payload = found
        else:
            path = Path(path)
            payload = load_checkpoint(path, map_location=next(self._network().parameters()).device)
        self._network().load_state_dict(payload["network"])
        if self.optimizer is not None and "optimizer" in payload:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in payload:
            self.lr_scheduler.load_state_dict(payload["lr_scheduler"])
        self.best_metric = float(payload.get("best_metric", self.best_metric))
        epoch, iteration = int(payload["epoch"]), int(payload["iteration"])

        def restore_counters(engine: Engine) -> None:
            # Ignite resets the counters when a run starts; set them afterwards so the run continues at epoch + 1.
            engine.state.epoch = epoch
            engine.state.iteration = iteration

        engine.add_event_handler(Events.STARTED, restore_counters)
        logger.info("resuming from %s: epoch %d, iteration %d done; training continues at epoch %d", path, epoch,
                    iteration, epoch + 1)
        return path
