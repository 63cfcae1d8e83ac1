"""CAMContrast maths: in-graph CAMs, min-max with epsilon, guided attention loss, suppression, five-crop, losses."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.losses import ContrastiveLoss

from mri_ssl.errors import InputError
from mri_ssl.losses.cam_attention import CAMClassificationLoss, guided_attention_loss
from mri_ssl.losses.ntxent import NTXentLoss
from mri_ssl.losses.supcon import SupConLoss
from mri_ssl.metrics.representation_probe import projection_spread
from mri_ssl.metrics.fundus import average_precision, cam_iou, pointing_game_hit
from mri_ssl.networks.cam import CAMClassifier, CAMContrastModel, class_activation_maps
from mri_ssl.engines.schedules import WarmupCosine, weight_decay_groups
from mri_ssl.transforms.heatmaps import (
    five_crop_boxes,
    five_crops,
    foreground_mask,
    minmax_normalise,
    suppress_background,
    suppress_negative,
)

TINY_ENCODER = {"features": [4, 8, 8], "dropout": 0.0}


def test_gap_of_cam_plus_bias_is_the_logit():
    torch.manual_seed(0)
    network = CAMClassifier(encoder_config=TINY_ENCODER).eval()
    x = torch.rand(3, 3, 32, 32)
    logits, cams = network(x, return_cams=True)
    assert cams.shape == (3, 2, 8, 8)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + network.classifier.bias, logits, atol=1e-5, rtol=1e-5)


def test_cam_is_the_class_weighted_sum_of_feature_maps():
    features = torch.rand(2, 5, 4, 4)
    weights = torch.rand(3, 5)
    expected = torch.stack([sum(weights[c, k] * features[:, k] for k in range(5)) for c in range(3)], dim=1)
    torch.testing.assert_close(class_activation_maps(features, weights), expected)


def test_cams_carry_gradient_for_the_attention_loss():
    network = CAMClassifier(encoder_config=TINY_ENCODER)
    logits, cams = network(torch.rand(2, 3, 16, 16), return_cams=True)
    cams.sum().backward()
    assert network.classifier.weight.grad is not None and network.encoder.stages[0][0].conv.weight.grad is not None


def test_minmax_maps_to_unit_range_and_constant_map_gives_zeros_not_nan():
    maps = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[7.0, 7.0], [7.0, 7.0]]]])
    normalised = minmax_normalise(maps)
    torch.testing.assert_close(normalised[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-5, rtol=0)
    assert torch.isfinite(normalised).all()
    assert torch.equal(normalised[1], torch.zeros_like(normalised[1]))


def test_guided_attention_loss_matches_equation_4():
    torch.manual_seed(1)
    cams = torch.randn(4, 2, 3, 3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 3.0]])  # p0 >= 0.5 for rows 0 and 2
    labels = torch.tensor([0, 0, 1, 1])  # only row 0 is a correctly classified normal
    loss = guided_attention_loss(cams, logits, labels)
    m0, m1 = cams[0, 0], cams[0, 1]
    m0 = (m0 - m0.min()) / (m0.max() - m0.min() + 1e-6)
    m1 = (m1 - m1.min()) / (m1.max() - m1.min() + 1e-6)
    expected = (1 - m0 + m1).sum() / 9
    torch.testing.assert_close(loss, torch.tensor([float(expected), 0.0, 0.0, 0.0]))


def test_guided_attention_is_zero_for_ideal_normal_cams_and_two_when_reversed():
    ideal = torch.zeros(1, 2, 4, 4)
    ideal[0, 0] = 1.0
    ideal[0, 0, 0, 0] = 0.999  # min-max needs some spread: all 1 except one pixel
    logits = torch.tensor([[5.0, 0.0]])
    assert float(guided_attention_loss(ideal, logits, torch.tensor([0]))) == pytest.approx(1 / 16, abs=1e-3)
    reversed_loss = float(guided_attention_loss(ideal.flip(1), logits, torch.tensor([0])))
    assert reversed_loss == pytest.approx(2 - 1 / 16, abs=1e-3)


def test_classification_loss_is_ce_plus_lambda_attention():
    torch.manual_seed(2)
    logits, cams, labels = torch.randn(6, 2), torch.randn(6, 2, 4, 4), torch.tensor([0, 1, 0, 1, 0, 0])
    losses = CAMClassificationLoss(attention_weight=0.01)(logits, cams, labels)
    expected = F.cross_entropy(logits, labels) + 0.01 * guided_attention_loss(cams, logits, labels).mean()
    torch.testing.assert_close(losses["loss"], expected)
    with pytest.raises(InputError, match="attention_weight"):
        CAMClassificationLoss(attention_weight=float("nan"))


def test_negative_suppression_zeros_normal_heatmaps_only():
    heatmaps = torch.rand(4, 1, 5, 5) + 0.1
    suppressed = suppress_negative(heatmaps, torch.tensor([0, 1, 0, 1]))
    assert torch.equal(suppressed[0], torch.zeros(1, 5, 5)) and torch.equal(suppressed[2], torch.zeros(1, 5, 5))
    assert torch.equal(suppressed[1], heatmaps[1]) and torch.equal(suppressed[3], heatmaps[3])


def test_background_suppression_uses_the_thresholded_and_area_downsampled_image():
    image = torch.zeros(1, 3, 8, 8)
    image[..., :4, :] = 100.0  # top half bright
    image[..., 4:, :2] = 14.0  # below the threshold of 15: background
    image[..., 4:, 2:4] = 16.0  # just above: foreground
    mask = foreground_mask(image)
    assert mask.shape == (1, 1, 8, 8) and mask[0, 0, 5, 1] == 0 and mask[0, 0, 5, 3] == 1
    suppressed = suppress_background(torch.ones(1, 1, 2, 2), mask)
    # Each heatmap pixel covers 4 x 4 image pixels: top ones fully inside, bottom-left half, bottom-right none.
    torch.testing.assert_close(suppressed[0, 0], torch.tensor([[1.0, 1.0], [0.5, 0.0]]))


def test_five_crop_geometry():
    boxes = five_crop_boxes(10, 8)
    assert boxes == {"tl": (0, 0, 5, 4), "tr": (0, 4, 5, 4), "bl": (5, 0, 5, 4), "br": (5, 4, 5, 4),
                     "c": (2, 2, 5, 4)}
    image = torch.arange(16 * 16).view(1, 16, 16)
    crops = five_crops(image)
    # The four quadrants tile the image without overlap; the centre crop is the middle half.
    assert torch.equal(torch.cat([torch.cat([crops["tl"], crops["tr"]], 2), torch.cat([crops["bl"], crops["br"]], 2)],
                                 1), image)
    assert torch.equal(crops["c"], image[:, 4:12, 4:12])
    # An image and its 4x smaller heatmap: each crop of the heatmap covers the same part of the photograph.
    heatmap = F.avg_pool2d(image[None].float(), 4)[0]
    for position, crop in five_crops(heatmap).items():
        top, left, h, w = five_crop_boxes(16, 16)[position]
        assert crop.shape == (1, 2, 2)
        torch.testing.assert_close(crop, F.avg_pool2d(image[None, :, top:top + h, left:left + w].float(), 4)[0])
    with pytest.raises(InputError, match="2 x 2"):
        five_crop_boxes(1, 5)


def reference_ntxent(z1, z2, tau):
    """Eq. (5) over the 2B projections, written out with loops: the full 2B-1 denominator."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / denominator)
    return total / (2 * n)


def test_camcontrast_loss_is_eq5_and_monai_contrastive_loss_at_tau_0_05():
    torch.manual_seed(3)
    images, heatmaps = torch.randn(6, 16), torch.randn(6, 16)
    loss = NTXentLoss(temperature=0.05)(images, heatmaps)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(reference_ntxent(images, heatmaps, 0.05), rel=1e-4)
    monai = ContrastiveLoss(temperature=0.05)(images, heatmaps)
    assert float(loss) == pytest.approx(float(monai), rel=1e-4)


def test_camcontrast_loss_stays_float32_under_bfloat16_autocast():
    z1, z2 = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NTXentLoss(temperature=0.05)(z1, z2)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(reference_ntxent(z1.float(), z2.float(), 0.05), rel=1e-4)


def test_supcon_equals_ntxent_with_distinct_labels_and_matches_the_formula():
    torch.manual_seed(4)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    distinct = SupConLoss(0.1)(z1, z2, torch.arange(5))
    assert float(distinct) == pytest.approx(float(NTXentLoss(0.1)(z1, z2)), rel=1e-5)
    labels = torch.tensor([0, 1, 0, 1, 1])
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    y = torch.cat([labels, labels])
    expected = 0.0
    for a in range(10):
        others = [k for k in range(10) if k != a]
        log_denominator = torch.logsumexp(torch.stack([z[a] @ z[k] / 0.1 for k in others]), 0)
        positives = [p for p in others if y[p] == y[a]]
        expected += -sum(float(z[a] @ z[p] / 0.1 - log_denominator) for p in positives) / len(positives)
    assert float(SupConLoss(0.1)(z1, z2, labels)) == pytest.approx(expected / 10, rel=1e-5)


def test_camcontrast_model_towers_project_to_128():
    model = CAMContrastModel(encoder_config=TINY_ENCODER, heatmap_features=(4, 4, 8), projection_hidden=16)
    output = model(torch.rand(2, 3, 32, 32), torch.rand(2, 1, 4, 4))
    assert output["projection"].shape == output["heatmap_projection"].shape == (2, 128)


def test_warmup_cosine_and_no_decay_on_norms_and_biases():
    schedule = WarmupCosine(total_steps=10, warmup_fraction=0.3)
    values = [schedule(step) for step in range(10)]
    np.testing.assert_allclose(values[:3], [1 / 3, 2 / 3, 1.0])
    assert values[3] == pytest.approx(1.0) and all(a >= b for a, b in zip(values[3:], values[4:]))
    assert schedule(10) == pytest.approx(0.0, abs=1e-12)
    model = CAMClassifier(encoder_config=TINY_ENCODER)
    decay, no_decay = weight_decay_groups(model, 1e-4)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(decay["params"]) + len(no_decay["params"]) == len(
        list(model.parameters()))


def test_localisation_and_precision_metrics():
    cam = np.zeros((4, 4))
    cam[1, 2] = 1.0
    mask = np.zeros((4, 4), bool)
    mask[1, 1:3] = True
    assert pointing_game_hit(cam, mask) and not pointing_game_hit(cam, np.roll(mask, 2, axis=0))
    assert cam_iou(cam, mask) == pytest.approx(0.5)
    # Scores 0.9 (pos), 0.8 (neg), 0.7 (pos): precision 1 at recall 1/2, 2/3 at recall 1 -> AP = 0.5 + 0.5 * 2/3.
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0.1], [0]))


def test_heatmap_follows_the_image_flip_only_when_switched_on():
    from mri_ssl.transforms.photo import pretraining_views

    image = torch.zeros(3, 16, 16)
    image[:, :, :8] = 1.0  # left half bright
    heatmap = torch.zeros(1, 4, 4)
    heatmap[:, :, :2] = 1.0  # the heatmap marks the same (left) half
    for seed in range(6):
        views = pretraining_views("camcontrast", rotate_degrees=0.0, zoom=0.0, colour_strength=0.0,
                                  grayscale_prob=0.0)
        views.set_random_state(seed=seed)
        out = views({"image": image.clone(), "heatmap": heatmap.clone()})
        bright_left = bool(out["image"][0, :, :8].mean() > out["image"][0, :, 8:].mean())
        hot_left = bool(out["heatmap"][0, :, :2].mean() > out["heatmap"][0, :, 2:].mean())
        assert bright_left == hot_left
        fixed = pretraining_views("camcontrast", augment_heatmap_geometry=False)
        fixed.set_random_state(seed=seed)
        assert torch.equal(fixed({"image": image.clone(), "heatmap": heatmap.clone()})["heatmap"], heatmap)
    with pytest.raises(InputError, match="fixed five crops"):
        pretraining_views("camcontrast", crop_mode="random")


@pytest.mark.parametrize("method", ["camcontrast", "simclr", "supcon"])
def test_stage2_trainer_runs_each_method(method):
    from mri_ssl.engines import CAMContrastTrainer

    torch.manual_seed(5)
    batches = [{"image": torch.rand(4, 3, 16, 16), "view2": torch.rand(4, 3, 16, 16),
                "heatmap": torch.rand(4, 1, 4, 4), "abnormal": torch.tensor([0, 1, 0, 1])} for _ in range(2)]
    model = CAMContrastModel(encoder_config={"features": [4, 8], "dropout": 0.0}, heatmap_features=(4, 4, 4),
                             projection_hidden=8, heatmap=method == "camcontrast")
    before = [p.detach().clone() for p in model.parameters()]
    loss = SupConLoss(0.05) if method == "supcon" else NTXentLoss(0.05)
    seen_by_handlers = []  # what a train handler (StatsHandler, TensorBoard) reads at each epoch end

    class Recorder:
        def attach(self, engine):
            engine.add_event_handler(Events.EPOCH_COMPLETED,
                                     lambda e: seen_by_handlers.append(e.state.metrics.get("projection_std")))

    trainer = CAMContrastTrainer("cpu", 2, batches, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                 loss, method=method, train_handlers=[Recorder()])
    trainer.run()
    assert math.isfinite(trainer.state.output["loss"])
    # The handlers see this epoch's mean collapse indicator, not the previous epoch's (or none at epoch 1).
    assert seen_by_handlers[-1] == pytest.approx(np.mean(trainer.epoch_projection_std))
    assert len(seen_by_handlers) == 2 and seen_by_handlers[0] is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(InputError, match="unknown pretraining method"):
        CAMContrastTrainer("cpu", 1, batches, model, torch.optim.SGD(model.parameters(), lr=0.1), loss, method="byol")


def test_stage1_trainer_uses_the_attention_term():
    from mri_ssl.engines import CAMClassifierTrainer

    torch.manual_seed(6)
    network = CAMClassifier(encoder_config=TINY_ENCODER)
    batches = [{"image": torch.rand(4, 3, 16, 16), "abnormal": torch.tensor([0, 0, 1, 0])}]
    trainer = CAMClassifierTrainer("cpu", 1, batches, network, torch.optim.AdamW(network.parameters()),
                                   CAMClassificationLoss(0.01))
    trainer.run()
    output = trainer.state.output
    assert output["loss"] == pytest.approx(output["ce"] + 0.01 * output["attention"], rel=1e-5)


def test_stage1_trainer_stops_on_a_nan_loss_before_the_weights_change():
    from mri_ssl.engines import CAMClassifierTrainer
    from mri_ssl.engines.guards import NonFiniteLossError

    torch.manual_seed(6)
    network = CAMClassifier(encoder_config=TINY_ENCODER)
    before = [p.detach().clone() for p in network.parameters()]
    batches = [{"image": torch.full((4, 3, 16, 16), float("nan")), "abnormal": torch.tensor([0, 0, 1, 0])}]
    trainer = CAMClassifierTrainer("cpu", 1, batches, network, torch.optim.AdamW(network.parameters()),
                                   CAMClassificationLoss(0.01))
    with pytest.raises(NonFiniteLossError, match="epoch 1, iteration 1"):
        trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters()))


def sparse_heatmap_crops(n: int = 16, size: int = 4, seed: int = 0) -> torch.Tensor:
    """Heatmap crops as generate_heatmaps writes them: half all-zero (normal images, negative suppression), half
    sparse maps in [0, 1] (a few active CAM cells), (n, 1, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 1, size, size, generator=generator)
    maps = maps * (torch.rand(n, 1, size, size, generator=generator) > 0.6)
    maps[: n // 2] = 0.0
    return maps


def test_collapse_alarm_counts_epochs_whose_heatmap_tower_maps_every_crop_to_one_vector():
    from mri_ssl.engines import CAMContrastTrainer

    def run(heatmap, collapse_tower=False):
        torch.manual_seed(3)
        model = CAMContrastModel(encoder_config={"features": [4, 8], "dropout": 0.0}, heatmap_features=(4, 4, 4),
                                 projection_hidden=8, heatmap_batch_norm=True, projection_batch_norm=True)
        if collapse_tower:  # the tower's output layer zeroed: every heatmap crop maps to one vector
            for parameter in model.heatmap_projector[-1].parameters():
                parameter.data.zero_()
        batches = [{"image": torch.rand(8, 3, 16, 16), "heatmap": heatmap} for _ in range(2)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        trainer = CAMContrastTrainer("cpu", 2, batches, model, optimizer, NTXentLoss(0.1))
        trainer.run()
        return trainer

    # Distinct heatmaps, one heatmap projection for the whole batch: spread 0, an alarm at each epoch.
    collapsed = run(sparse_heatmap_crops(8, seed=1), collapse_tower=True)
    assert collapsed.state.metrics["heatmap_projection_std"] == pytest.approx(0.0, abs=1e-6)
    assert collapsed.collapse_alarms == 2
    healthy = run(sparse_heatmap_crops(8, seed=1))
    assert healthy.state.metrics["heatmap_projection_std"] > 0.5 / math.sqrt(128)
    assert healthy.state.metrics["image_projection_std"] > 0.5 / math.sqrt(128)
    assert healthy.collapse_alarms == 0
    # Every heatmap crop the same input (a batch of normal images): nothing to spread, no spread measured, no alarm.
    alike = run(torch.zeros(8, 1, 4, 4))
    assert "heatmap_projection_std" not in alike.state.metrics and alike.collapse_alarms == 0


def test_tower_spread_is_taken_over_distinct_inputs():
    """Half a batch of all-zero heatmaps (normal images) must not lower the heatmap tower's measured spread: the
    spread is that of the distinct inputs' projections (``distinct_rows``), not of the batch's rows."""
    from mri_ssl.engines.camcontrast_trainer import distinct_rows

    inputs = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [3.0, 4.0], [1.0, 2.0], [0.0, 0.0]])
    assert distinct_rows(inputs).tolist() == [0, 1, 3]
    assert distinct_rows(torch.zeros(5, 1, 2, 2)).tolist() == [0]
    heatmaps = sparse_heatmap_crops(16, seed=2)  # rows 0-7 all zero
    kept = distinct_rows(heatmaps)
    assert kept.tolist() == [0] + list(range(8, 16))
    projections = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    projections[:8] = projections[0]  # identical inputs, identical projections
    assert projection_spread(projections[kept]) > projection_spread(projections) + 0.01


def shipped_pretraining_network(seed: int, **overrides):
    """The untrained stage-2 network of the shipped pretrain.json + cpu_demo.json (+ overrides)."""
    from monai.bundle import ConfigParser

    from bundle_runner import bundle_dir

    configs = bundle_dir("fundus_camcontrast") / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "pretrain.json"), str(configs / "cpu_demo.json")])
    parser.update({"device": "$torch.device('cpu')", **overrides})
    torch.manual_seed(seed)
    return parser.get_parsed_content("network_def", lazy=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shipped_heatmap_tower_does_not_collapse_at_initialisation(seed):
    # The collapse of issue 20: the paper's tower (no normalisation) maps every heatmap crop of a batch to nearly one
    # projection at initialisation (spread ~0.001), and NT-Xent at tau 0.05 then pulls every image onto it. The
    # shipped configs must start with the heatmap projections spread out (healthy: 1/sqrt(128) = 0.088).
    alarm = 0.5 / math.sqrt(128)
    heatmaps, images = sparse_heatmap_crops(16, seed=seed), torch.rand(16, 3, 64, 64)
    network = shipped_pretraining_network(seed).train()
    with torch.no_grad():
        output = network(images, heatmaps)
    assert projection_spread(output["heatmap_projection"]) > alarm
    assert projection_spread(output["projection"]) > alarm
    paper = shipped_pretraining_network(seed, paper_recipe=True).train()
    with torch.no_grad():
        assert projection_spread(paper(images, heatmaps)["heatmap_projection"]) < alarm  # what the test guards
