"""The representation probe of video-text pretraining: cross-modal retrieval among held-out (video, report) pairs.

The pretraining itself uses no labels, and neither does this probe: the network embeds every held-out study and its
report, and the probe reports

- **R@1 / R@5 / R@10 both ways and RSUM** over the whole held-out set (``mri_ssl.metrics.retrieval``: pessimistic
  ties, so a collapsed model scores 0); RSUM is ``score``, what a run's ``best.pt`` is chosen on. Chance RSUM for N
  pairs is ``2 (1 + min(5, N) + min(10, N)) / N x 100`` (``rsum_chance``);
- the **held-out CLIP loss** of all N pairs at once with the network's own logit scale, beside its chance value
  ``ln N`` (every report equally similar to every study): above chance means the model is confidently wrong on
  studies it has not seen, the sign of memorised training pairs;
- the **projection spread** of the video embeddings (``projection_spread``): near ``1/sqrt(dim)`` when spread out,
  0 when collapsed.

``RetrievalProbe`` runs it in a trainer (``ProbeHandler``): at the start (the untrained network) beside a reference
network of the same shape that never trains, then every ``interval`` epochs; into ``engine.state.metrics``
(``probe_*``), TensorBoard and a JSON history.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from mri_ssl.errors import InputError
from mri_ssl.metrics.representation_probe import ProbeHandler, projection_spread
from mri_ssl.metrics.retrieval import retrieval_metrics

REPORTED = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "v2t_R@1", "v2t_R@5", "v2t_R@10", "t2v_MdR", "v2t_MdR", "RSUM")


def rsum_chance(n: int) -> float:
    """Expected RSUM (percent, both directions, K = 1, 5, 10) of random scores among ``n`` pairs."""
    return 2.0 * sum(100.0 * min(k, n) / n for k in (1, 5, 10))


def retrieval_probe_scores(video: torch.Tensor, text: torch.Tensor, clip_loss: float) -> dict[str, float]:
    """The probe's figures from the (N, D) video and text embeddings of N held-out pairs (row i of each: pair i)
    and the CLIP loss of those N pairs together.

    Returns R@1/5/10 (percent) and median ranks both ways, ``RSUM`` and ``rsum_chance``, ``clip_loss`` and
    ``clip_loss_chance`` (``ln N``), ``spread`` and ``spread_healthy``, ``score`` (= ``RSUM``) and ``n``.
    """
    if video.ndim != 2 or video.shape != text.shape or video.shape[0] < 2:
        raise InputError("embeddings", f"expected video and text embeddings of the same (N >= 2, D) shape, got "
                                       f"{tuple(video.shape)} and {tuple(text.shape)}")
    n = int(video.shape[0])
    video, text = video.double(), text.double()
    similarity = torch.nn.functional.normalize(video, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
    metrics = retrieval_metrics(similarity)
    scores = {name: metrics[name] for name in REPORTED}
    scores.update(rsum_chance=rsum_chance(n), clip_loss=float(clip_loss), clip_loss_chance=math.log(n),
                  spread=projection_spread(video), spread_healthy=float(video.shape[1]) ** -0.5,
                  score=metrics["RSUM"], n=n)
    return scores


class RetrievalProbe(ProbeHandler):
    """Retrieval among the held-out (video, report) pairs, in a trainer (see the module docstring).

    Args:
        data: the held-out pairs: items ``{"video": (T, 1, H, W), "ids": (L,)}`` (``CMRVideoTextDataset`` of the
            validation split in evaluation mode; never the test split).
        reference_network: the never-trained network of the same shape measured beside the training one (e.g. the
            same builder with another seed); None: a copy of the network re-initialised by ``random_init_copy``.
        random_init_seed, interval, log_dir, history_path: as ``ProbeHandler``.
        batch_size: pairs per forward pass.

    The network: ``network(video, ids)`` returns ``{"video": (B, D), "text": (B, D)}`` and ``network.loss(video,
    text, gather=False)`` is its CLIP loss (``VideoTextModel``).
    """

    def __init__(self, data: Sequence[Mapping], reference_network: torch.nn.Module | None = None,
                 random_init_seed: int = 999, interval: int = 1, log_dir: str | os.PathLike | None = None,
                 history_path: str | os.PathLike | None = None, batch_size: int = 32):
        super().__init__(random_init_seed, interval, log_dir, history_path)
        if len(data) < 2:
            raise InputError("probe data", f"retrieval needs at least 2 held-out pairs, got {len(data)}")
        self.data, self.reference_network, self.batch_size = data, reference_network, int(batch_size)

    def random_init_network(self, network: torch.nn.Module) -> torch.nn.Module:
        if self.reference_network is None:
            return super().random_init_network(network)
        return self.reference_network

    @torch.no_grad()
    def measure(self, network: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """The probe's scores for ``network`` (a DDP wrapper is unwrapped; its mode and torch's RNG are restored)."""
        network = getattr(network, "module", network)
        device = torch.device(device)
        network.to(device)
        was_training, rng_state = network.training, torch.get_rng_state()
        network.eval()
        try:
            videos, texts = [], []
            for batch in DataLoader(self.data, batch_size=self.batch_size, shuffle=False):
                out = network(batch["video"].to(device), batch["ids"].to(device))
                videos.append(out["video"].float())
                texts.append(out["text"].float())
            video, text = torch.cat(videos), torch.cat(texts)
            clip_loss = float(network.loss(video, text, gather=False))
        finally:
            network.train(was_training)
            torch.set_rng_state(rng_state)
        return retrieval_probe_scores(video.cpu(), text.cpu(), clip_loss)

    def describe(self, s: Mapping[str, float], r: Mapping[str, float]) -> str:
        return (f"retrieval among {s['n']} held-out pairs: RSUM {s['RSUM']:.1f} (untrained reference "
                f"{r['RSUM']:.1f}, chance {s['rsum_chance']:.1f}), R@1/5/10 text-to-video {s['t2v_R@1']:.1f} / "
                f"{s['t2v_R@5']:.1f} / {s['t2v_R@10']:.1f}, video-to-text {s['v2t_R@1']:.1f} / {s['v2t_R@5']:.1f} / "
                f"{s['v2t_R@10']:.1f}; held-out CLIP loss {s['clip_loss']:.3f} (chance ln N "
                f"{s['clip_loss_chance']:.3f}, untrained reference {r['clip_loss']:.3f}); spread "
                f"{s['spread']:.4f} (healthy {s['spread_healthy']:.4f})")


__all__ = ["RetrievalProbe", "retrieval_probe_scores", "rsum_chance"]
