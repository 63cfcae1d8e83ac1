"""A label-free representation probe: does pretraining make an encoder that tells crops apart across sequences?

The probe is a fixed set of N crops from held-out subjects, each seen in two views (for qMRI maps: the same crop
simulated under two independently drawn acquisitions, sequence and protocol, never both the same; with the four
sequences drawn uniformly, about a quarter of the crops get one sequence twice under two protocols). The encoder
embeds all 2N views, and the probe reports, for the pooled features and for the projections:

- **cross-sequence retrieval top-1 / top-5**: for each view, is the other view of its crop the most (one of the five
  most) cosine-similar of the N candidates in the other set? Both directions are pooled (2N queries). Ties count
  against the true item (``mri_ssl.metrics.retrieval.true_item_ranks``), so a collapsed encoder scores 0, never a
  flattering 1. Chance is 1/N (top-1) and min(5, N)/N (top-5).
- **held-out NT-Xent** at this N beside its chance value ``ln(2N - 1)`` (all 2N - 1 candidates equally similar).
- **projection spread**: the std over the 2N views of the L2-normalised projections, averaged over dimensions;
  about ``1/sqrt(dim)`` for spread-out embeddings, 0 for a collapsed encoder.

``probe_score`` (the mean of the four retrieval accuracies) is what a run's ``best.pt`` is chosen on; the
standard error of the feature top-1 (``sqrt(p (1 - p) / 2N)``, treating the 2N queries as independent) says how
far two runs' top-1 must differ before the difference means anything.

At N = 32 that standard error is about 0.06, as large as the gains a short run makes. The probe can therefore hold
K disjoint groups of N crops (``groups``): every figure is computed within a group, among its N candidates, exactly
as for one set (chance stays 1/N), and averaged over the groups, and the standard error is the binomial one over
all 2NK queries, ``1/sqrt(K)`` as large (``grouped_probe_scores``).

``RepresentationProbe`` runs the probe in a trainer: at the start (the untrained encoder, so every curve starts at
its own baseline, beside a randomly re-initialised encoder of the same shape) and every ``interval`` epochs, into
``engine.state.metrics`` (``probe_*``), TensorBoard and a JSON history.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from abc import ABC, abstractmethod
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mri_ssl.distributed import rank
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import save_json
from mri_ssl.io.history import records_before
from mri_ssl.losses.ntxent import NTXentLoss
from mri_ssl.metrics.retrieval import true_item_ranks

logger = logging.getLogger(__name__)

TOP_KS = (1, 5)
EMBEDDINGS = ("features", "projection")


def projection_spread(projection: torch.Tensor) -> float:
    """Std over the rows of the L2-normalised ``projection`` ``(N, dim)``, averaged over dimensions.

    Spread-out embeddings keep it near ``1 / sqrt(dim)``; a collapsed encoder (all outputs equal) drives it to 0.
    """
    normalised = F.normalize(projection.detach().float(), dim=1)
    return float(normalised.std(dim=0).mean())


def retrieval_top_k(z1: torch.Tensor, z2: torch.Tensor, ks: Sequence[int] = TOP_KS) -> dict[int, float]:
    """Share of the 2N queries (each row of ``z1`` among ``z2`` and back) whose partner is in their top K.

    ``z1``, ``z2``: ``(N, dim)``, row i of each is one crop's two views; similarity is the cosine.
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise InputError("embeddings", f"expected two (N, dim) tensors of the same shape with N >= 2, got "
                                       f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    similarity = F.normalize(z1.detach().double(), dim=1) @ F.normalize(z2.detach().double(), dim=1).T
    column_ranks, row_ranks = true_item_ranks(similarity)
    ranks = np.concatenate([column_ranks, row_ranks])
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


def probe_scores(features1: torch.Tensor, features2: torch.Tensor, projection1: torch.Tensor,
                 projection2: torch.Tensor, temperature: float = 0.5) -> dict[str, float]:
    """Every probe figure from the embeddings of the two views of N crops (row i of each: crop i).

    Returns ``features_top1``, ``features_top5``, ``projection_top1``, ``projection_top5`` (fractions),
    ``top1_chance`` (1/N), ``features_top1_se``, ``ntxent`` and ``ntxent_chance`` (``ln(2N - 1)``), ``spread`` and
    ``spread_healthy`` (``1/sqrt(dim)``), ``score`` (the mean of the four retrieval accuracies) and ``n`` (N).
    """
    n = int(features1.shape[0])
    scores: dict[str, float] = {}
    for name, (z1, z2) in zip(EMBEDDINGS, ((features1, features2), (projection1, projection2))):
        for k, value in retrieval_top_k(z1, z2).items():
            scores[f"{name}_top{k}"] = value
    p = scores["features_top1"]
    scores["features_top1_se"] = math.sqrt(p * (1.0 - p) / (2 * n))
    scores["top1_chance"] = 1.0 / n
    loss = NTXentLoss(temperature, gather_distributed=False)
    scores["ntxent"] = float(loss(projection1.detach().float(), projection2.detach().float()))
    scores["ntxent_chance"] = math.log(2 * n - 1)
    scores["spread"] = projection_spread(torch.cat([projection1, projection2]))
    scores["spread_healthy"] = 1.0 / math.sqrt(projection1.shape[1])
    scores["score"] = float(np.mean([scores[f"{e}_top{k}"] for e in EMBEDDINGS for k in TOP_KS]))
    scores["n"] = n
    return scores


def grouped_probe_scores(features1: torch.Tensor, features2: torch.Tensor, projection1: torch.Tensor,
                         projection2: torch.Tensor, groups: int = 1, temperature: float = 0.5) -> dict[str, float]:
    """``probe_scores`` of each of ``groups`` consecutive, equal blocks of rows (each a probe set of N = rows /
    groups crops: retrieval among N candidates, NT-Xent at N), averaged over the groups.

    Every figure keeps its meaning at N (chance 1/N, ``ln(2N - 1)``); averaging over K groups only makes it more
    precise. ``features_top1_se`` is the binomial standard error over all ``2NK`` queries,
    ``sqrt(p (1 - p) / 2NK)``: with K = 4 it is estimated from 256 queries rather than from 4 group means, it is the
    one-group formula when K = 1, and it shrinks as ``1/sqrt(K)``. ``features_top1_group_se`` (K >= 2) is the standard
    error of the K group means, ``std / sqrt(K)``: a check on the binomial one, which treats the queries as
    independent although the two directions of a pair and the crops of one subject are not. ``groups`` is K.
    """
    groups = int(groups)
    rows = int(features1.shape[0])
    if groups < 1 or rows % groups:
        raise InputError("groups", f"must be a whole number >= 1 dividing the {rows} probe crops, got {groups}")
    n = rows // groups
    per_group = [probe_scores(*(z[g * n:(g + 1) * n] for z in (features1, features2, projection1, projection2)),
                              temperature=temperature) for g in range(groups)]
    scores = {name: float(np.mean([s[name] for s in per_group])) for name in per_group[0] if name != "n"}
    p = scores["features_top1"]
    scores["features_top1_se"] = math.sqrt(p * (1.0 - p) / (2 * n * groups))
    if groups > 1:
        scores["features_top1_group_se"] = float(np.std([s["features_top1"] for s in per_group], ddof=1)
                                                 / math.sqrt(groups))
    scores["n"] = n
    scores["groups"] = groups
    return scores


def _pad_to(volume: torch.Tensor, crop_size: Sequence[int]) -> torch.Tensor:
    """``volume`` ``(C, X, Y, Z)`` zero-padded (centred) on every axis shorter than the crop."""
    pad = [max(0, c - s) for s, c in zip(volume.shape[1:], crop_size)]
    return F.pad(volume, [p for half in reversed(pad) for p in (half // 2, half - half // 2)])


def sample_crop_groups(volumes: Sequence[torch.Tensor], crops_per_volume: int, groups: int,
                       crop_size: Sequence[int], seed: int, min_foreground: float = 0.5,
                       max_tries: int = 1000) -> Iterator[torch.Tensor]:
    """``groups`` disjoint sets of crops, one at a time: each ``(N, C, *crop_size)`` with N = ``crops_per_volume``
    crops of every ``(C, X, Y, Z)`` volume (volume-major), so every group is a probe set of the same make-up.

    Crop corners are uniform over the positions that keep the crop inside; a crop is kept when at least
    ``min_foreground`` of its voxels have a positive first channel (PD, or the image), so the probe compares
    anatomy, not air, and when no earlier crop of the volume (in any group) has the same corner, so the groups are
    disjoint. Volumes smaller than the crop are zero-padded (centred). One generator draws group after group, so
    the first group is the same whatever ``groups`` is.
    """
    crop_size = tuple(int(s) for s in crop_size)
    rng = np.random.default_rng(seed)
    volumes = [_pad_to(torch.as_tensor(volume).float(), crop_size) for volume in volumes]
    taken: list[set[tuple[int, ...]]] = [set() for _ in volumes]
    for group in range(int(groups)):
        crops = []
        for index, volume in enumerate(volumes):
            kept = 0
            for _ in range(max_tries):
                corner = tuple(int(rng.integers(0, s - c + 1)) for s, c in zip(volume.shape[1:], crop_size))
                if corner in taken[index]:
                    continue
                crop = volume[(slice(None), *(slice(a, a + c) for a, c in zip(corner, crop_size)))]
                if float((crop[0] > 0).float().mean()) >= min_foreground:
                    crops.append(crop.clone())
                    taken[index].add(corner)
                    kept += 1
                    if kept == crops_per_volume:
                        break
            if kept < crops_per_volume:
                where = f" (group {group + 1} of {groups})" if groups > 1 else ""
                raise InputError(f"probe volume {index}", f"found only {kept} of {crops_per_volume} crops of "
                                                          f"{crop_size} with >= {min_foreground:.0%} foreground"
                                                          f"{where}")
        yield torch.stack(crops)


def sample_crops(volumes: Sequence[torch.Tensor], crops_per_volume: int, crop_size: Sequence[int], seed: int,
                 min_foreground: float = 0.5, max_tries: int = 1000) -> torch.Tensor:
    """``crops_per_volume`` distinct crops ``(C, *crop_size)`` from each ``(C, X, Y, Z)`` volume, as one
    ``(N, C, ...)``: the single group of ``sample_crop_groups``."""
    return next(sample_crop_groups(volumes, crops_per_volume, 1, crop_size, seed, min_foreground, max_tries))


def _outputs(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, projection) of a network's output: a dict with those keys, or one tensor used as both."""
    if isinstance(output, Mapping):
        features = output.get("features", output.get("projection"))
        return features, output.get("projection", features)
    return output, output


@torch.no_grad()
def embed_images(network: torch.nn.Module, images: torch.Tensor, device: torch.device,
                 batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, projection)`` ``(N, ...)`` flattened, on the CPU, of the network in eval mode (mode restored)."""
    was_training = network.training
    network.eval()
    try:
        features, projections = [], []
        for start in range(0, images.shape[0], batch_size):
            feature, projection = _outputs(network(images[start:start + batch_size].to(device)))
            features.append(feature.float().flatten(1).cpu())
            projections.append(projection.float().flatten(1).cpu())
    finally:
        network.train(was_training)
    return torch.cat(features), torch.cat(projections)


def embed_views(network: torch.nn.Module, view1: torch.Tensor, view2: torch.Tensor, device: torch.device,
                batch_size: int = 8) -> tuple[torch.Tensor, ...]:
    """``(features1, features2, projection1, projection2)`` of the network in eval mode (its mode is restored)."""
    features1, projection1 = embed_images(network, view1, device, batch_size)
    features2, projection2 = embed_images(network, view2, device, batch_size)
    return features1, features2, projection1, projection2


def random_init_copy(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``network`` with every parameter and buffer re-initialised from ``seed`` (torch's RNG restored).

    Every module with a ``reset_parameters`` method resets itself; one that has children too (a ViT, whose position
    embeddings are parameters of no layer) resets its whole subtree its own way, so its children are not reset again.
    """
    state = torch.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        fresh = copy.deepcopy(network)
        _reset(fresh)
    finally:
        torch.set_rng_state(state)
    return fresh


def _reset(module: torch.nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        if next(module.children(), None) is not None:
            return
    for child in module.children():
        _reset(child)


def probe_milestones(written: Mapping) -> dict | None:
    """The records of a ``ProbeHandler`` history file (``probe.json``'s content) a summary reports: the random-init
    ``untrained_reference``, the ``start`` (step 0), the ``best`` trained record (highest ``score`` after step 0,
    the one ``best.pt`` holds when it is chosen on the probe) and the ``end``; None when the history is empty."""
    history = written.get("history") or []
    if not history:
        return None
    trained = [record for record in history if record.get("epoch", 0) > 0] or history
    return {"untrained_reference": written.get("random_init"), "start": history[0],
            "best": max(trained, key=lambda record: record["score"]), "end": history[-1]}


class ProbeHandler(ABC):
    """A probe run in a trainer: at the start (the untrained encoder, and once a randomly re-initialised copy of the
    same shape), then every ``interval`` epochs; subclasses say what they measure (``measure``) and how it reads
    (``describe``).

    Args:
        random_init_seed: seed of the random-init network of the same shape measured beside the untrained one.
        interval: epochs between probes (the validation interval).
        log_dir: TensorBoard folder (``probe/<name>`` and ``probe_random_init/<name>`` scalars against iterations);
            None: no TensorBoard.
        history_path: JSON file rewritten after every probe: ``{"random_init": {...}, "history": [{"iteration",
            "epoch", ...scores, "train_loss", "val_*"}, ...]}`` (``history[0]``: the start, iteration 0;
            ``epoch``: the epochs completed; ``train_loss``: the mean training loss since the previous probe;
            ``val_*``: the engine's validation metrics at that moment); None: no file. A run resumed from a
            checkpoint keeps the file's records before its resumed iteration and goes on from there.

    ``engine.state.metrics`` gets ``probe_<name>`` for every score (``probe_score`` for choosing the best checkpoint)
    at each epoch-end probe; attach the probe before the checkpointer so it sees the current epoch's values.
    """
    def __init__(self, random_init_seed: int = 999, interval: int = 1, log_dir: str | os.PathLike | None = None,
                 history_path: str | os.PathLike | None = None):
        self.random_init_seed = int(random_init_seed)
        self.interval = max(1, int(interval))
        self.log_dir = log_dir
        self.history_path = history_path
        self.random_init: dict[str, float] | None = None
        self.history: list[dict] = []
        self._train_losses: list[float] = []
        self._writer = None
        self._started = False

    @abstractmethod
    def measure(self, network: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """The probe's scores for ``network``, with ``score`` (higher is better) among them."""

    @abstractmethod
    def describe(self, scores: Mapping[str, float], random_init: Mapping[str, float]) -> str:
        """One log line: the scores beside the random-init network's."""

    def random_init_network(self, network: torch.nn.Module) -> torch.nn.Module:
        """The never-trained network of the same shape measured once beside ``network`` (default: a copy
        re-initialised by ``random_init_copy``; a subclass may give its own, built the way the network was)."""
        return random_init_copy(network, self.random_init_seed)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        # The start's probe runs when the first epoch starts, not at STARTED: a resumed run restores its weights and
        # counters in STARTED handlers, which may come after this one. It is recorded (history, log, TensorBoard)
        # but not put in state.metrics: a checkpointer would read it at the next epoch's end as the score of
        # weights that have trained since.
        engine.add_event_handler(Events.EPOCH_STARTED, self._probe_start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_train_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _probe_start(self, engine) -> None:
        """The probe of the weights a run starts (or resumes) with, once per run, after the earlier records of a
        resumed run's history file."""
        if self._started:
            return
        self._started = True
        iteration = int(engine.state.iteration)
        if iteration > 0:
            self.history = records_before(self.history_path, "iteration", iteration)
        self(engine, at_start=True)

    def _add_train_loss(self, engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if isinstance(loss, (int, float, torch.Tensor)):
            self._train_losses.append(float(loss))

    def __call__(self, engine, at_start: bool = False) -> None:
        network, device = engine.network, engine.state.device
        if self.random_init is None:
            self.random_init = self.measure(self.random_init_network(getattr(network, "module", network)), device)
        scores = self.measure(network, device)
        iteration = int(engine.state.iteration)
        # Epochs completed: at an epoch's start ignite has already counted the epoch being started.
        epoch = int(engine.state.epoch) - (1 if at_start else 0)
        # Beside the probe, the losses the curves need: the training loss since the last probe and the validation
        # loss terms computed at this epoch's end (``ValidationLoss`` runs first).
        losses = {name: float(value) for name, value in engine.state.metrics.items()
                  if name.startswith("val_") and isinstance(value, (int, float))}
        if self._train_losses:
            losses["train_loss"] = float(np.mean(self._train_losses))
        self._train_losses = []
        self.history.append({"iteration": iteration, "epoch": epoch, **scores, **losses})
        if not at_start:
            engine.state.metrics.update({f"probe_{name}": value for name, value in scores.items()})
        self._write(iteration, scores)
        self._log(iteration, scores)

    def _log(self, iteration: int, scores: Mapping[str, float]) -> None:
        logger.info("probe at iteration %d: %s", iteration, self.describe(scores, self.random_init))

    def _write(self, iteration: int, scores: Mapping[str, float]) -> None:
        if rank() != 0:  # every rank measures the same weights; one writes
            return
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))
            for prefix, values in (("probe", scores), ("probe_random_init", self.random_init)):
                for name, value in values.items():
                    self._writer.add_scalar(f"{prefix}/{name}", value, iteration)
            self._writer.flush()
        if self.history_path is not None:
            save_json({"random_init": self.random_init, "history": self.history}, self.history_path)


class RepresentationProbe(ProbeHandler):
    """The cross-sequence retrieval probe (``probe_scores``) in a trainer: at the start, then every ``interval`` epochs.

    Args:
        data: held-out items (dicts of channel-first tensors, e.g. a ``CacheDataset`` of the validation subjects).
        input_keys: the keys stacked as input channels (qMRI maps, or one image).
        view_pair: makes the two views of each crop (``ContrastiveViewPair``: for maps, mode ``seqinv`` without
            spatial augmentation, so both views are the same crop under two different acquisitions). It is called on
            crops of exactly ``crop_size``, once, with ``seed``: the probe set is fixed for the whole run.
        crop_size: the crops' size in voxels.
        crops_per_subject: crops per held-out item in each group; N = items x crops_per_subject.
        groups: K disjoint probe sets of N crops each (every one with ``crops_per_subject`` crops of every item);
            each figure is computed among the N of a group and averaged over the K groups
            (``grouped_probe_scores``): the same measure as one set, with a standard error ``1/sqrt(K)`` as large.
            The embedding costs K times one set's.
        temperature: the NT-Xent temperature (the training loss's).
        seed: fixes the crops and the views.
        random_init_seed, interval, log_dir, history_path: as ``ProbeHandler``.
        batch_size: views per forward pass.
    """
    def __init__(self, data: Iterable[Mapping], input_keys: Sequence[str], view_pair: Callable,
                 crop_size: Sequence[int], crops_per_subject: int = 8, temperature: float = 0.5, seed: int = 54321,
                 random_init_seed: int = 999, interval: int = 1, log_dir: str | os.PathLike | None = None,
                 history_path: str | os.PathLike | None = None, batch_size: int = 8, groups: int = 1):
        for name, value in (("crops_per_subject", crops_per_subject), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InputError(name, f"must be a whole number >= 1, got {value!r}")
        self.data = data
        self.input_keys = tuple(input_keys)
        self.view_pair = view_pair
        self.crop_size = tuple(int(s) for s in (crop_size if isinstance(crop_size, Sequence) else [crop_size] * 3))
        self.crops_per_subject = int(crops_per_subject)
        self.groups = int(groups)
        self.temperature = float(temperature)
        self.seed = int(seed)
        super().__init__(random_init_seed, interval, log_dir, history_path)
        self.batch_size = int(batch_size)
        self.views: tuple[torch.Tensor, torch.Tensor] | None = None

    def build_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed probe set: ``(view1, view2)``, each ``(K N, 1, *crop_size)`` (group g: rows g N to (g + 1) N),
        made once and kept. The views are made group by group (one call of the view pair each, drawing on from the
        one seed), so only one group's multi-channel crops are in memory at a time, and the first group is the
        probe set of ``groups=1``."""
        if self.views is None:
            volumes = [torch.cat([torch.as_tensor(item[k]).float() for k in self.input_keys]) for item in self.data]
            if not volumes:
                raise InputError("probe data", "no held-out items to probe; the validation split is empty")
            if len(volumes) * self.crops_per_subject < 2:
                raise InputError("probe data", "the probe needs at least 2 crops (retrieval among 1 is trivial)")
            if hasattr(self.view_pair, "set_random_state"):
                self.view_pair.set_random_state(seed=self.seed)
            state = torch.get_rng_state()
            views1, views2 = [], []
            try:
                for crops in sample_crop_groups(volumes, self.crops_per_subject, self.groups, self.crop_size,
                                                self.seed):
                    pair = self.view_pair(crops)
                    views1.append(pair["view1"].cpu())
                    views2.append(pair["view2"].cpu())
            finally:
                torch.set_rng_state(state)
            self.views = (torch.cat(views1), torch.cat(views2))
        return self.views

    def measure(self, network: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """The probe's scores for ``network`` (a DDP wrapper is unwrapped)."""
        view1, view2 = self.build_views()
        network = getattr(network, "module", network)
        embeddings = embed_views(network, view1, view2, torch.device(device), self.batch_size)
        return grouped_probe_scores(*embeddings, groups=self.groups, temperature=self.temperature)

    def describe(self, s: Mapping[str, float], r: Mapping[str, float]) -> str:
        groups = f", mean of {s['groups']} groups" if s.get("groups", 1) > 1 else ""
        return (f"(N={s['n']}{groups}) top-1 features {s['features_top1']:.3f} +- {s['features_top1_se']:.3f} "
                f"(random init "
                f"{r['features_top1']:.3f}), projection {s['projection_top1']:.3f} ({r['projection_top1']:.3f}); "
                f"top-5 features {s['features_top5']:.3f} ({r['features_top5']:.3f}), projection "
                f"{s['projection_top5']:.3f} ({r['projection_top5']:.3f}); chance {s['top1_chance']:.3f}; held-out "
                f"NT-Xent {s['ntxent']:.3f} (chance {s['ntxent_chance']:.3f}, random init {r['ntxent']:.3f}); "
                f"spread {s['spread']:.3f} (healthy {s['spread_healthy']:.3f})")


__all__ = ["ProbeHandler", "RepresentationProbe", "embed_images", "embed_views", "grouped_probe_scores",
           "probe_milestones", "probe_scores", "projection_spread", "random_init_copy", "retrieval_top_k",
           "sample_crop_groups", "sample_crops"]
