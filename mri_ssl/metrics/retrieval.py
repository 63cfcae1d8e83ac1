"""Cross-modal retrieval metrics over a whole (video x report) similarity matrix.

``similarity[i, j]`` scores video i against report j; the true pairs are the diagonal (video i belongs with report
i). For each query the *rank* of its true item is 1 + the number of other candidates scored at least as high:

    video-to-text, query video i:   rank_i = #{ j : similarity[i, j] >= similarity[i, i] }
    text-to-video, query report j:  rank_j = #{ i : similarity[i, j] >= similarity[j, j] }

Tie rule (pessimistic): a candidate scored *exactly equal* to the true item counts against it, i.e. it is ranked
ahead of the true item. A constant similarity matrix (an encoder that has collapsed) therefore gives every query
rank N and R@1 = 0 (for N > 1), never a flattering 100. Other conventions (optimistic, or mean over tie orders)
would report a collapsed model as perfect or as chance; this one cannot overstate retrieval.

Reported per direction (prefix ``t2v_`` or ``v2t_``): R@1, R@5, R@10, R@50 in percent (share of queries whose true
item ranks <= K; when N < K every query trivially counts), median rank ``MdR`` and mean rank ``MnR`` (1 is best),
and ``RSUM`` = sum of R@1 + R@5 + R@10 over both directions (maximum 600), as in the video-text literature.
"""

from __future__ import annotations

import numpy as np
import torch

from mri_ssl.errors import InputError

RECALL_KS = (1, 5, 10, 50)


def true_item_ranks(similarity) -> tuple[np.ndarray, np.ndarray]:
    """1-based pessimistic ranks of the true items: (text-to-video ranks per report, video-to-text per video).

    Args:
        similarity: (N, N) array or tensor, rows are videos and columns reports, true pairs on the diagonal.
    """
    sim = _as_square_matrix(similarity)
    diagonal = np.diag(sim)
    video_to_text = (sim >= diagonal[:, None]).sum(axis=1)  # over the reports in each video's row
    text_to_video = (sim >= diagonal[None, :]).sum(axis=0)  # over the videos in each report's column
    return text_to_video.astype(np.int64), video_to_text.astype(np.int64)


def rank_summary(ranks: np.ndarray, prefix: str, ks=RECALL_KS) -> dict[str, float]:
    """R@K (percent), median and mean rank of 1-based ranks, keys ``{prefix}R@K``, ``{prefix}MdR``, ``{prefix}MnR``."""
    ranks = np.asarray(ranks)
    summary = {f"{prefix}R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    summary[f"{prefix}MdR"] = float(np.median(ranks))
    summary[f"{prefix}MnR"] = float(np.mean(ranks))
    return summary


def retrieval_metrics(similarity) -> dict[str, float]:
    """Text-to-video and video-to-text R@1/5/10/50, MdR, MnR and RSUM for a (videos x reports) similarity matrix.

    Returns:
        A flat dict: ``t2v_R@1 ... t2v_MnR``, ``v2t_R@1 ... v2t_MnR``, ``RSUM`` and ``num_queries``.
    """
    t2v, v2t = true_item_ranks(similarity)
    metrics = {**rank_summary(t2v, "t2v_"), **rank_summary(v2t, "v2t_")}
    metrics["RSUM"] = sum(metrics[f"{d}_R@{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10))
    metrics["num_queries"] = int(len(t2v))
    return metrics


def _as_square_matrix(similarity) -> np.ndarray:
    if isinstance(similarity, torch.Tensor):
        similarity = similarity.detach().cpu().double().numpy()
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 1:
        raise InputError("similarity", f"expected a square (N, N) matrix of video-report scores with N >= 1, "
                                       f"got shape {sim.shape}")
    if not np.all(np.isfinite(sim)):
        raise InputError("similarity", f"{int(np.sum(~np.isfinite(sim)))} non-finite scores (NaN/inf); check the "
                                       f"embeddings for NaN before ranking")
    return sim
