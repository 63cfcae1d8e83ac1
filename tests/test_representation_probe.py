"""The representation probe: retrieval in closed form, chance levels, the fixed probe set, the trainer handler."""

import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from mri_ssl.errors import InputError
from mri_ssl.metrics.representation_probe import (
    RepresentationProbe,
    grouped_probe_scores,
    probe_scores,
    random_init_copy,
    retrieval_top_k,
    sample_crop_groups,
    sample_crops,
)
from mri_ssl.transforms import ContrastiveViewPair

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def position_encoding(positions: torch.Tensor, frequencies=(0.05, 0.11, 0.23, 0.47)) -> torch.Tensor:
    """An 'encoder' that returns the crop's position: Fourier features of the (x, y, z) corner in voxels.

    The cosine similarity of two codes is ``sum_f,axis cos(f (p_i - p_j)) / (3 F)``, 1 exactly when p_i = p_j and
    below 1 otherwise (for these incommensurate frequencies and positions < 100 voxels apart).
    """
    angles = positions.double()[:, :, None] * torch.tensor(frequencies, dtype=torch.float64)
    return torch.cat([angles.cos(), angles.sin()], dim=2).flatten(1)


def test_retrieval_is_one_for_an_encoder_that_returns_the_crop_position():
    positions = torch.from_numpy(np.random.default_rng(0).choice(40 ** 3, size=48, replace=False))
    positions = torch.stack([positions // 1600, positions // 40 % 40, positions % 40], dim=1)
    code = position_encoding(positions)
    assert retrieval_top_k(code, code.clone()) == {1: 1.0, 5: 1.0}
    scores = probe_scores(code, code.clone(), code, code.clone())
    assert scores["features_top1"] == scores["projection_top1"] == scores["score"] == 1.0
    assert scores["features_top1_se"] == 0.0
    # The positive is the most similar candidate, so the loss is below chance.
    assert scores["ntxent"] < scores["ntxent_chance"] == pytest.approx(math.log(2 * 48 - 1))


def test_retrieval_of_noise_is_about_one_in_n():
    n, generator = 32, torch.Generator().manual_seed(1)
    draws = [retrieval_top_k(torch.randn(n, 16, generator=generator), torch.randn(n, 16, generator=generator))
             for _ in range(200)]
    top1 = np.mean([d[1] for d in draws])
    top5 = np.mean([d[5] for d in draws])
    # 200 draws of 2N = 64 queries: the standard error of the mean is about 0.0022 (top-1) and 0.0046 (top-5).
    assert top1 == pytest.approx(1 / n, abs=0.01)
    assert top5 == pytest.approx(5 / n, abs=0.02)


def test_a_collapsed_encoder_scores_zero_retrieval_chance_loss_and_zero_spread():
    constant = torch.ones(10, 8)
    scores = probe_scores(constant, constant, constant, constant, temperature=0.5)
    assert scores["features_top1"] == scores["projection_top5"] == 0.0  # ties count against the true item
    assert scores["ntxent"] == pytest.approx(scores["ntxent_chance"], abs=1e-6)
    assert scores["spread"] == pytest.approx(0.0, abs=1e-7)
    assert scores["spread_healthy"] == pytest.approx(1 / math.sqrt(8))


def test_spread_of_random_directions_is_near_one_over_sqrt_dim():
    z = torch.randn(4000, 64, generator=torch.Generator().manual_seed(2))
    assert probe_scores(z[:2000], z[2000:], z[:2000], z[2000:])["spread"] == pytest.approx(1 / 8, rel=0.02)


def test_retrieval_rejects_mismatched_embeddings():
    with pytest.raises(InputError, match="same shape"):
        retrieval_top_k(torch.zeros(4, 3), torch.zeros(5, 3))


def test_sample_crops_keeps_foreground_crops_reproducibly():
    volume = torch.zeros(2, 40, 40, 40)
    volume[:, :20] = 1.0  # foreground is the half x < 20
    crops = sample_crops([volume], 6, (16, 16, 16), seed=3)
    assert crops.shape == (6, 2, 16, 16, 16)
    assert all(float((c[0] > 0).float().mean()) >= 0.5 for c in crops)
    torch.testing.assert_close(crops, sample_crops([volume], 6, (16, 16, 16), seed=3))
    with pytest.raises(InputError, match="probe volume 0"):
        sample_crops([torch.zeros(1, 20, 20, 20)], 1, (16, 16, 16), seed=0, max_tries=20)


def test_random_init_copy_is_a_fresh_network_of_the_same_shape():
    network = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    state = torch.get_rng_state()
    fresh = random_init_copy(network, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(fresh[0].weight, network[0].weight)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    torch.testing.assert_close(random_init_copy(network, seed=5)[0].weight, fresh[0].weight)


class SupportEncoder(torch.nn.Module):
    """Returns which voxels of the crop hold tissue (above the z-scored background): the crop's footprint, which no
    change of sequence alters. Its retrieval is 1 exactly when both views show the same crop."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        flat = x.flatten(1)
        support = (flat > flat.amin(dim=1, keepdim=True) + 1e-3).float() - 0.5
        return {"features": support * self.scale, "projection": support[:, :32]}


def maps_volume(seed: int) -> torch.Tensor:
    """Maps ``(4, 24, 24, 24)`` (pd, r1, r2s, mt) of random tissue blobs: every crop has its own footprint."""
    g = torch.Generator().manual_seed(seed)
    tissue = (torch.rand(1, 1, 6, 6, 6, generator=g) > 0.4).float()
    tissue = torch.nn.functional.interpolate(tissue, size=(24, 24, 24), mode="nearest")[0, 0]
    return torch.stack([0.8 * tissue, 0.5 + 0.5 * tissue, 10.0 + 10.0 * tissue, 0.01 * tissue])


def probe_view_pair(**changes):
    settings = dict(mode="seqinv", crop_size=12, map_names=("pd", "r1", "r2s", "mt"), rotate_range_deg=0.0,
                    shear_range=0.0, scale_range=0.0, flip_prob=0.0, bias_field_prob=0.0, gibbs_prob=0.0,
                    rician_prob=0.0, dropout_prob=0.0, validate=False)
    return ContrastiveViewPair(**{**settings, **changes})


def test_the_probe_views_are_one_crop_under_two_sequences(tmp_path):
    data = [{"pd": v[0:1], "r1": v[1:2], "r2s": v[2:3], "mt": v[3:4]} for v in (maps_volume(0), maps_volume(1))]
    probe = RepresentationProbe(data, ("pd", "r1", "r2s", "mt"), probe_view_pair(), crop_size=(12, 12, 12),
                                crops_per_subject=8, temperature=0.5, seed=0, log_dir=tmp_path / "tb",
                                history_path=tmp_path / "probe.json")
    view1, view2 = probe.build_views()
    assert view1.shape == view2.shape == (16, 1, 12, 12, 12)
    assert not torch.allclose(view1, view2)  # two different sequences
    assert probe.build_views()[0] is view1  # fixed for the run
    scores = probe.measure(SupportEncoder())
    assert scores["features_top1"] == 1.0 and scores["n"] == 16

    engine = Engine(lambda engine, batch: None)
    engine.network = SupportEncoder()
    engine.state.device = torch.device("cpu")
    probe.attach(engine)
    engine.run([0, 0], max_epochs=2)
    history = json.loads((tmp_path / "probe.json").read_text())
    assert [h["iteration"] for h in history["history"]] == [0, 2, 4]  # step 0, then each epoch
    assert history["random_init"]["features_top1"] == 1.0  # the support encoder has nothing to learn
    assert engine.state.metrics["probe_score"] == history["history"][-1]["score"]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_the_probe_is_attached_before_checkpoint_selection_runs():
    calls = []
    engine = Engine(lambda engine, batch: None)
    engine.network = SupportEncoder()
    engine.state.device = torch.device("cpu")
    data = [{"pd": v[0:1], "r1": v[1:2], "r2s": v[2:3], "mt": v[3:4]} for v in (maps_volume(2),)]
    probe = RepresentationProbe(data, ("pd", "r1", "r2s", "mt"), probe_view_pair(), crop_size=12,
                                crops_per_subject=4, interval=2)
    probe.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: calls.append(e.state.metrics.get("probe_score")))
    engine.run([0], max_epochs=2)
    # Epoch 1 has no probe, and the start's probe is not offered as the score of epoch 1's weights.
    assert len(probe.history) == 2 and calls == [None, probe.history[-1]["score"]]


def test_a_resumed_run_continues_the_probe_history_at_its_resumed_step(tmp_path):
    data = [{"pd": v[0:1], "r1": v[1:2], "r2s": v[2:3], "mt": v[3:4]} for v in (maps_volume(3),)]

    def run(max_epochs, resume_at=None):
        engine = Engine(lambda engine, batch: None)
        engine.network = SupportEncoder()
        engine.state.device = torch.device("cpu")
        probe = RepresentationProbe(data, ("pd", "r1", "r2s", "mt"), probe_view_pair(), crop_size=12,
                                    crops_per_subject=4, history_path=tmp_path / "probe.json")
        probe.attach(engine)
        if resume_at is not None:  # as Checkpointer.resume does: counters restored by a later STARTED handler
            def restore(engine):
                engine.state.epoch, engine.state.iteration = resume_at

            engine.add_event_handler(Events.STARTED, restore)
        engine.run([0, 0], max_epochs=max_epochs)
        return json.loads((tmp_path / "probe.json").read_text())["history"]

    first = run(max_epochs=3)
    assert [(h["iteration"], h["epoch"]) for h in first] == [(0, 0), (2, 1), (4, 2), (6, 3)]
    # Resumed after epoch 2 (as from latest.pt after a crash in epoch 3): the records before it are kept, the
    # resumed weights are probed at iteration 4, labelled with the 2 epochs done, and the run goes on from there.
    resumed = run(max_epochs=4, resume_at=(2, 4))
    assert [(h["iteration"], h["epoch"]) for h in resumed] == [(0, 0), (2, 1), (4, 2), (6, 3), (8, 4)]
    assert resumed[:2] == first[:2]


def fake_pretraining_result(mode: str, seed: int, top1_end: float):
    from types import SimpleNamespace

    from mri_ssl.experiments.runner import STATUS_OK

    def scores(top1, iteration):
        return {"iteration": iteration, "epoch": iteration // 10, "features_top1": top1, "projection_top1": top1,
                "features_top5": min(1.0, 2 * top1), "ntxent": 4.0 - top1, "ntxent_chance": math.log(63),
                "spread": 0.1, "spread_healthy": 0.177, "top1_chance": 1 / 32, "n": 32, "train_loss": 2.0 - top1}

    probe = {"random_init": scores(0.5, 0), "history": [scores(0.4, 0), scores(top1_end, 30)]}
    return SimpleNamespace(run=SimpleNamespace(kind="pretrain", mode=mode, seed=seed), status=STATUS_OK, probe=probe)


def test_the_probe_table_and_learning_curves_read_the_runs_histories(tmp_path):
    from types import SimpleNamespace

    from mri_ssl.experiments.figures import plot_learning_curves
    from mri_ssl.experiments.tables import probe_markdown

    results = [fake_pretraining_result("base", 0, 0.3), fake_pretraining_result("seqinv", 0, 0.8),
               fake_pretraining_result("seqinv", 1, 0.9)]
    grid = SimpleNamespace(name="curves", modes=("random", "base", "seqinv"), titles={})  # a Grid's fields used here
    table = probe_markdown(results, grid)
    assert "| SeqInv | end | 2 | 0.850 ± 0.071 |" in table
    assert "| Base | step 0 | 1 | 0.400 |" in table and "| Base | random init | 1 | 0.500 |" in table
    assert "N = 32" in table and f"{math.log(63):.3f}" in table
    path = plot_learning_curves(results, grid, tmp_path / "figures" / "learning_curves.png")
    assert path.is_file() and path.stat().st_size > 10_000
    assert plot_learning_curves([], grid, tmp_path / "none.png") is None


def test_the_probe_table_pairs_each_mode_with_base_by_seed():
    from types import SimpleNamespace

    from mri_ssl.experiments.tables import paired_probe_text, probe_markdown

    # Base ends at 0.3 / 0.5 / 0.4, SeqInv at 0.4 / 0.5 / 0.6 in seeds 0 / 1 / 2; seed 3 ran SeqInv only.
    results = [fake_pretraining_result("base", seed, top1) for seed, top1 in enumerate((0.3, 0.5, 0.4))]
    results += [fake_pretraining_result("seqinv", seed, top1) for seed, top1 in enumerate((0.4, 0.5, 0.6, 0.99))]
    grid = SimpleNamespace(name="curves", modes=("random", "base", "seqinv"), titles={})
    text = paired_probe_text(results, grid, "features_top1", "top-1 features")
    # differences 0.1, 0.0, 0.2: mean 0.1, standard deviation 0.1, standard error 0.1 / sqrt(3); a tie is not ahead
    assert f"SeqInv - Base +0.100 ± {0.1 / math.sqrt(3):.3f} (standard error over 3 seeds), ahead in 2 of 3" in text
    assert text in probe_markdown(results, grid)
    one_seed = paired_probe_text(results[:1] + results[3:4], grid, "features_top1", "top-1 features")
    assert "SeqInv - Base +0.100 (one seed: no standard error), ahead in 1 of 1" in one_seed
    assert paired_probe_text(results[:3], grid, "features_top1", "top-1 features") == ""  # one mode: nothing to pair


def test_the_video_text_probe_table_and_curves_show_retrieval_against_chance(tmp_path):
    from types import SimpleNamespace

    from mri_ssl.experiments.figures import plot_learning_curves
    from mri_ssl.experiments.runner import STATUS_OK
    from mri_ssl.experiments.tables import probe_markdown

    def scores(rsum, iteration):  # a RetrievalProbe record (mri_ssl.metrics.RetrievalProbe), 100 validation pairs
        return {"iteration": iteration, "epoch": iteration // 25, "RSUM": rsum, "rsum_chance": 32.0,
                "t2v_R@5": rsum / 6, "v2t_R@5": rsum / 6, "clip_loss": 4.6 - rsum / 200,
                "clip_loss_chance": math.log(100), "spread": 0.03, "spread_healthy": 0.044, "n": 100,
                "train_loss": 2.0}

    results = [SimpleNamespace(run=SimpleNamespace(kind="pretrain", mode="clip", seed=seed), status=STATUS_OK,
                               probe={"random_init": scores(34.0, 0), "history": [scores(31.0, 0), scores(end, 125)]})
               for seed, end in ((0, 117.0), (1, 87.0))]
    grid = SimpleNamespace(name="cmr", modes=("random", "clip"), titles={})
    table = probe_markdown(results, grid)
    assert "chance RSUM 32" in table and f"{math.log(100):.3f}" in table
    assert "| clip | end | 2 | 102.000 ± 21.213 |" in table and "| clip | random init | 2 | 34.000 ± 0.000 |" in table
    path = plot_learning_curves(results, grid, tmp_path / "learning_curves.png")
    assert path.is_file() and path.stat().st_size > 10_000


def test_grouped_retrieval_is_one_for_the_position_encoder_and_stays_at_n():
    positions = torch.from_numpy(np.random.default_rng(4).choice(40 ** 3, size=4 * 32, replace=False))
    code = position_encoding(torch.stack([positions // 1600, positions // 40 % 40, positions % 40], dim=1))
    scores = grouped_probe_scores(code, code.clone(), code, code.clone(), groups=4)
    assert scores["features_top1"] == scores["projection_top5"] == scores["score"] == 1.0
    assert scores["features_top1_se"] == scores["features_top1_group_se"] == 0.0
    assert scores["n"] == 32 and scores["groups"] == 4
    # Chance and the loss's chance are those of N = 32 candidates, not of the 128 crops.
    assert scores["top1_chance"] == 1 / 32 and scores["ntxent_chance"] == pytest.approx(math.log(63))
    assert scores["ntxent"] < scores["ntxent_chance"]


def test_grouped_retrieval_of_noise_is_about_one_in_n_and_its_error_shrinks_as_one_over_sqrt_k():
    generator = torch.Generator().manual_seed(3)
    spread = {}
    for groups in (1, 4):
        draws = []
        for _ in range(300):
            z1, z2 = (torch.randn(32 * groups, 16, generator=generator) for _ in range(2))
            draws.append(grouped_probe_scores(z1, z2, z1, z2, groups=groups)["features_top1"])
        spread[groups] = np.std(draws)
        # 300 draws of 2NK queries: the mean's standard error is at most 0.0014 (K = 1).
        assert np.mean(draws) == pytest.approx(1 / 32, abs=0.006)
    # The figure's spread over probe sets halves with four groups (1/sqrt(4)); measured 0.51 on this seed.
    assert spread[4] / spread[1] == pytest.approx(0.5, abs=0.1)


def test_the_reported_standard_error_is_binomial_over_all_queries():
    one = torch.randn(32, 8, generator=torch.Generator().manual_seed(6))
    other = one + 0.8 * torch.randn(32, 8, generator=torch.Generator().manual_seed(7))
    single = grouped_probe_scores(one, other, one, other, groups=1)
    assert single == {**probe_scores(one, other, one, other), "groups": 1}  # one group: the plain probe
    p = single["features_top1"]
    assert 0 < p < 1
    # Four copies of the same group: the same top-1, twice as many queries per half the error; no spread between.
    repeated = grouped_probe_scores(one.repeat(4, 1), other.repeat(4, 1), one.repeat(4, 1), other.repeat(4, 1),
                                    groups=4)
    assert repeated["features_top1"] == p and repeated["n"] == 32
    assert repeated["features_top1_se"] == pytest.approx(math.sqrt(p * (1 - p) / (2 * 32 * 4)))
    assert repeated["features_top1_se"] == pytest.approx(single["features_top1_se"] / 2)
    assert repeated["features_top1_group_se"] == 0.0
    with pytest.raises(InputError, match="groups"):
        grouped_probe_scores(one, other, one, other, groups=3)  # 32 crops do not split into 3 groups


def position_volume(size: int = 24) -> torch.Tensor:
    """One channel whose value at (x, y, z) is 1 + its index: a crop's first voxel names its corner."""
    return (torch.arange(size ** 3, dtype=torch.float32) + 1).reshape(1, size, size, size)


def test_crop_groups_are_disjoint_have_n_crops_each_and_the_first_does_not_depend_on_k():
    volumes = [position_volume(), position_volume() + 24 ** 3]
    groups = list(sample_crop_groups(volumes, 5, 6, (8, 8, 8), seed=2))
    assert len(groups) == 6 and all(g.shape == (10, 1, 8, 8, 8) for g in groups)
    for group in groups:  # volume-major: five crops of each volume in every group
        assert all(float(c[0, 0, 0, 0]) <= 24 ** 3 for c in group[:5])
        assert all(float(c[0, 0, 0, 0]) > 24 ** 3 for c in group[5:])
    corners = [float(c[0, 0, 0, 0]) for g in groups for c in g]
    assert len(set(corners)) == 60  # no crop in two groups (nor twice in one)
    torch.testing.assert_close(groups[0], sample_crops(volumes, 5, (8, 8, 8), seed=2))
    with pytest.raises(InputError, match="group 2 of 2"):  # 27 corners of an 8^3 crop in 10^3: 20 fit, 40 do not
        list(sample_crop_groups([position_volume(10)], 20, 2, (8, 8, 8), seed=0))


def test_the_grouped_probe_is_fixed_deterministic_and_scored_within_groups():
    data = [{"pd": v[0:1], "r1": v[1:2], "r2s": v[2:3], "mt": v[3:4]} for v in (maps_volume(0), maps_volume(1))]

    def probe(groups):
        return RepresentationProbe(data, ("pd", "r1", "r2s", "mt"), probe_view_pair(), crop_size=(12, 12, 12),
                                   crops_per_subject=4, seed=0, groups=groups)

    three = probe(3)
    view1, view2 = three.build_views()
    assert view1.shape == view2.shape == (24, 1, 12, 12, 12)
    again = probe(3).build_views()
    assert torch.equal(again[0], view1) and torch.equal(again[1], view2)
    one = probe(1).build_views()
    assert torch.equal(one[0], view1[:8]) and torch.equal(one[1], view2[:8])  # group 1 is the one-group probe set
    scores = three.measure(SupportEncoder())
    assert scores["n"] == 8 and scores["groups"] == 3 and scores["top1_chance"] == 1 / 8
    assert scores["features_top1"] == 1.0
    for bad in (0, 2.5, True):
        with pytest.raises(InputError, match="groups"):
            probe(bad)
