"""Retrieval metrics on hand-built similarity matrices, including ties (pessimistic rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_ssl.errors import InputError
from mri_ssl.metrics.retrieval import retrieval_metrics, true_item_ranks


def test_hand_built_matrix_with_ties():
    # rows = videos, columns = reports, true pairs on the diagonal
    sim = np.array([
        [0.9, 0.1, 0.2, 0.0],   # video 0: true report best                       -> v2t rank 1
        [0.5, 0.5, 0.1, 0.0],   # video 1: tie with report 0 counts against it    -> v2t rank 2
        [0.3, 0.8, 0.2, 0.2],   # video 2: two higher (0.3, 0.8) and a tie (0.2)  -> v2t rank 4
        [0.0, 0.0, 0.0, 0.7],   # video 3: best                                   -> v2t rank 1
    ])
    t2v, v2t = true_item_ranks(sim)
    assert v2t.tolist() == [1, 2, 4, 1]
    # columns: report 0: 0.9 is the top of its column -> 1; report 1: 0.5 vs 0.1, 0.8, 0.0 -> 2;
    # report 2: 0.2 vs 0.2 (video 0, tie), 0.1, 0.0 -> 2; report 3: 0.7 vs 0, 0, 0.2 -> 1
    assert t2v.tolist() == [1, 2, 2, 1]
    m = retrieval_metrics(sim)
    assert m["v2t_R@1"] == 50.0 and m["v2t_R@5"] == 100.0
    assert m["t2v_R@1"] == 50.0 and m["t2v_R@5"] == 100.0
    assert m["v2t_MdR"] == 1.5 and m["v2t_MnR"] == 2.0
    assert m["t2v_MdR"] == 1.5 and m["t2v_MnR"] == 1.5
    assert m["RSUM"] == 50 + 100 + 100 + 50 + 100 + 100
    assert m["num_queries"] == 4


def test_constant_matrix_is_worst_case_not_perfect():
    m = retrieval_metrics(torch.ones(6, 6))
    assert m["t2v_R@1"] == 0.0 and m["v2t_R@1"] == 0.0
    assert m["t2v_R@5"] == 0.0 and m["t2v_R@10"] == 100.0
    assert m["t2v_MdR"] == 6.0 and m["v2t_MnR"] == 6.0


def test_identity_is_perfect_and_matches_sorting_reference():
    assert retrieval_metrics(np.eye(5))["RSUM"] == 600.0
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(60, 60))  # continuous scores: no ties, ranks equal those from a full sort
    t2v, v2t = true_item_ranks(sim)
    for i in range(60):
        assert v2t[i] == 1 + int(np.where(np.argsort(-sim[i]) == i)[0][0])
        assert t2v[i] == 1 + int(np.where(np.argsort(-sim[:, i]) == i)[0][0])
    m = retrieval_metrics(sim)
    assert m["v2t_R@50"] == pytest.approx(100.0 * np.mean(v2t <= 50))
    assert m["v2t_MdR"] == np.median(v2t)


def test_transposing_swaps_directions():
    sim = np.random.default_rng(1).normal(size=(8, 8))
    a, b = retrieval_metrics(sim), retrieval_metrics(sim.T)
    for key in ("R@1", "R@5", "MdR", "MnR"):
        assert a[f"t2v_{key}"] == b[f"v2t_{key}"]


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.zeros(3), np.zeros((0, 0)), np.array([[1.0, np.nan], [0, 1]])])
def test_bad_matrices_are_named(bad):
    with pytest.raises(InputError, match="similarity"):
        retrieval_metrics(bad)
