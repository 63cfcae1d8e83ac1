"""SimSiam loss, heads, trainer and the ViT backbone; the classifier head."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from bundle_runner import bundle_dir
from mri_ssl.engines import (
    SimSiamTrainer, simsiam_learning_rate, simsiam_lr_lambdas, simsiam_optimizer, simsiam_parameter_groups,
)
from mri_ssl.errors import InputError
from mri_ssl.losses import SimSiamLoss, negative_cosine
from mri_ssl.metrics.classification import roc_auc
from mri_ssl.networks import SequenceClassifier, SimSiamModel, ViTEncoder2D
from mri_ssl.networks.vit import adapt_patch_kernel, adapt_position_embeddings, load_pretrained_weights
from mri_ssl.transforms import SimSiamViewPair

BUNDLE_CONFIGS = bundle_dir("cardiac_sequence_classification") / "configs"
TINY_VIT = {"img_size": 24, "patch_size": 6, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2}


def test_loss_is_minus_one_for_identical_predictions_and_targets_and_plus_one_for_opposite():
    p = torch.randn(6, 10)
    assert float(SimSiamLoss()(p, p, p, p)) == pytest.approx(-1.0, abs=1e-6)
    assert float(SimSiamLoss()(p, p, -p, -p)) == pytest.approx(1.0, abs=1e-6)
    # Scale-invariant: cosine, not distance.
    assert float(negative_cosine(3 * p, p)) == pytest.approx(-1.0, abs=1e-6)


def test_no_gradient_flows_into_the_target_branch():
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    SimSiamLoss()(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and float(p1.grad.abs().sum()) > 0


def test_loss_is_symmetric_in_the_two_views():
    p1, p2, z1, z2 = (torch.randn(5, 7) for _ in range(4))
    assert float(SimSiamLoss()(p1, p2, z1, z2)) == pytest.approx(float(SimSiamLoss()(p2, p1, z2, z1)))


def test_heads_follow_the_recipe():
    model = SimSiamModel(encoder_config=TINY_VIT, projection_dim=32, predictor_hidden=8)
    last_bn = model.projector[-1]
    assert isinstance(last_bn, nn.BatchNorm1d) and not last_bn.affine
    assert model.predictor[0].out_features == 8 and model.predictor[-1].out_features == 32
    out = model(torch.randn(3, 1, 24, 24))
    assert out["projection"].shape == out["prediction"].shape == (3, 32)
    assert out["features"].shape == (3, TINY_VIT["hidden_size"])


def test_learning_rate_recipe():
    assert simsiam_learning_rate(256) == pytest.approx(0.05)
    assert simsiam_learning_rate(512) == pytest.approx(0.1)
    cosine, constant = simsiam_lr_lambdas(10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert constant(7) == 1.0
    cosine, constant = simsiam_lr_lambdas(10, warmup_epochs=4)  # the CPU recipe's linear warm-up, both groups
    assert [constant(e) for e in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert cosine(1) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 10))) and cosine(5) == pytest.approx(0.5)
    model = SimSiamModel(encoder_config=TINY_VIT, projection_dim=16, predictor_hidden=4)
    groups = simsiam_parameter_groups(model)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in model.parameters()}
    assert ids[1] == {id(p) for p in model.predictor.parameters()}
    with pytest.raises(InputError, match="batch_size"):
        simsiam_learning_rate(1)


def test_the_optimiser_is_the_papers_sgd_or_the_cpu_recipes_adamw_over_the_same_two_groups():
    model = SimSiamModel(encoder_config=TINY_VIT, projection_dim=16, predictor_hidden=4)
    sgd = simsiam_optimizer(model, "sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    adamw = simsiam_optimizer(model, "AdamW", lr=1e-3, weight_decay=1e-4)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 1e-3
    assert [g["name"] for g in adamw.param_groups] == ["encoder_projector", "predictor"]
    with pytest.raises(InputError, match="pretrain_optimizer"):
        simsiam_optimizer(model, "lamb")


class ConstantModel(nn.Module):
    """Outputs the same projection for every image: a collapsed network."""

    def __init__(self, dim=16):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(dim))
        self.projector = nn.Linear(dim, dim)  # only its out_features is read
        self.predictor = nn.Linear(dim, dim)

    def forward(self, x):
        z = self.bias.expand(x.shape[0], -1) + 0 * x.mean()
        return {"projection": z, "prediction": self.predictor(z)}


def _trainer(network, epochs=1):
    data = [{"image": torch.rand(4, 1, 24, 24)} for _ in range(2)]
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    return SimSiamTrainer("cpu", epochs, data, network, optimizer, SimSiamViewPair(), SimSiamLoss(), seed=0)


def test_collapse_indicator_warns_for_a_collapsed_network(caplog):
    trainer = _trainer(ConstantModel())
    with caplog.at_level(logging.WARNING):
        trainer.run()
    assert trainer.state.metrics["projection_std"] == pytest.approx(0.0, abs=1e-6)
    assert trainer.collapse_warnings == 1
    assert "collapsing" in caplog.text


def test_trainer_trains_a_real_model_without_collapse_warning_and_reproducibly():
    torch.manual_seed(0)
    model = SimSiamModel(encoder_config=TINY_VIT, projection_dim=32, predictor_hidden=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model)
    trainer.run()
    ratio = trainer.state.metrics["projection_std_ratio"]
    assert 0.5 < ratio < 2.0
    assert trainer.collapse_warnings == 0
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("predictor.") for k in changed)


def test_view_pair_is_seeded_and_makes_two_different_views():
    images = torch.rand(3, 1, 32, 32)
    a = SimSiamViewPair().set_random_state(1)(images)
    b = SimSiamViewPair().set_random_state(1)(images)
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
    assert not torch.equal(a["view1"], a["view2"])
    assert a["view1"].shape == images.shape and type(a["view1"]) is torch.Tensor
    with pytest.raises(InputError, match="rotate_range_deg"):
        SimSiamViewPair(rotate_range_deg=400)


def test_view_geometry_closed_cases():
    images = torch.rand(2, 1, 20, 20)
    off = {"rotate_prob": 0.0, "zoom_prob": 0.0, "elastic_prob": 0.0, "intensity_prob": 0.0}
    identity = SimSiamViewPair(flip_prob=0.0, **off)(images)
    torch.testing.assert_close(identity["view1"], images)
    flipped = SimSiamViewPair(flip_prob=1.0, **off)(images)
    torch.testing.assert_close(flipped["view2"], images.flip(-1).flip(-2))
    # Intensity jitter alone keeps the geometry: the rank order of pixels is unchanged (monotone maps).
    jittered = SimSiamViewPair(flip_prob=0.0, rotate_prob=0.0, zoom_prob=0.0, elastic_prob=0.0,
                               intensity_prob=1.0)(images)["view1"]
    assert torch.equal(jittered[0].flatten().argsort(), images[0].flatten().argsort())
    # A small elastic field moves pixels by about its magnitude at most: the warped image stays close.
    elastic = SimSiamViewPair(flip_prob=0.0, rotate_prob=0.0, zoom_prob=0.0, intensity_prob=0.0, elastic_prob=1.0,
                              elastic_magnitude=(0.5, 0.5))(torch.linspace(0, 1, 20).repeat(1, 1, 20, 1))["view1"]
    assert float((elastic[..., 2:-2, 2:-2] - torch.linspace(0, 1, 20)[2:-2]).abs().max()) < 0.1


def test_vit_backbone_shape_and_bad_input():
    encoder = ViTEncoder2D(**TINY_VIT)
    assert encoder(torch.randn(2, 1, 24, 24)).shape == (2, 16)
    with pytest.raises(InputError, match="24 x 24"):
        encoder(torch.randn(2, 1, 30, 30))
    with pytest.raises(InputError, match="patch_size"):
        ViTEncoder2D(img_size=84, patch_size=10)


def _as_timm(encoder: ViTEncoder2D) -> dict:
    """The encoder's weights under timm's names, with RGB patch kernels and a class-token position."""
    names = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.qkv", "attn.out_proj": "attn.proj",
             "mlp.linear1": "mlp.fc1", "mlp.linear2": "mlp.fc2"}
    state = {}
    for key, value in encoder.vit.state_dict().items():
        if key.startswith("blocks."):
            _, index, *rest = key.split(".")
            module, kind = ".".join(rest[:-1]), rest[-1]
            if module in names:
                state[f"blocks.{index}.{names[module]}.{kind}"] = value
        elif key.startswith("norm."):
            state[key] = value
    weight = encoder.vit.patch_embedding.patch_embeddings.weight.detach()
    state["patch_embed.proj.weight"] = weight.repeat(1, 3, 1, 1) / 3  # grey input: the channel sum is the kernel
    state["patch_embed.proj.bias"] = encoder.vit.patch_embedding.patch_embeddings.bias.detach()
    pos = encoder.vit.patch_embedding.position_embeddings.detach()
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, pos.shape[-1]), pos], dim=1)
    state["cls_token"] = torch.zeros(1, 1, pos.shape[-1])
    state["head.weight"] = torch.zeros(1000, pos.shape[-1])
    return state


def test_timm_layout_imagenet_weights_load_into_the_monai_vit(tmp_path):
    torch.manual_seed(0)
    source = ViTEncoder2D(**TINY_VIT).eval()
    path = tmp_path / "vit_imagenet.pth"
    torch.save(_as_timm(source), path)
    loaded = ViTEncoder2D(**TINY_VIT, pretrained_path=str(path)).eval()
    x = torch.randn(2, 1, 24, 24)
    torch.testing.assert_close(loaded(x), source(x))
    # Weights of another size are refused with the file named.
    torch.save(_as_timm(ViTEncoder2D(**{**TINY_VIT, "hidden_size": 8, "num_heads": 2, "mlp_dim": 16})), path)
    with pytest.raises(InputError, match="vit_imagenet.pth"):
        load_pretrained_weights(ViTEncoder2D(**TINY_VIT), path)


def test_patch_and_position_embeddings_adapt_to_another_patch_size_and_grid():
    encoder = ViTEncoder2D(img_size=84, patch_size=12, hidden_size=8, mlp_dim=16, num_layers=1, num_heads=2)
    kernel = torch.randn(8, 3, 16, 16)
    adapted = adapt_patch_kernel(kernel, encoder)
    assert adapted.shape == (8, 1, 12, 12)
    # A flat grey patch keeps (about) its response: the kernel's sum over channels and pixels.
    torch.testing.assert_close(adapted.sum(dim=(1, 2, 3)), kernel.sum(dim=(1, 2, 3)), rtol=0.1, atol=0.5)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert adapt_position_embeddings(pos, 7).shape == (1, 49, 8)
    smooth = torch.ones(1, 1 + 14 * 14, 8)
    torch.testing.assert_close(adapt_position_embeddings(smooth, 7), torch.ones(1, 49, 8))


def test_linear_probe_freezes_the_backbone_and_keeps_it_in_eval_mode():
    classifier = SequenceClassifier(encoder_config={**TINY_VIT, "dropout_rate": 0.5}, num_classes=5,
                                    freeze_encoder=True)
    before = {k: v.clone() for k, v in classifier.encoder.state_dict().items()}
    optimizer = torch.optim.SGD(classifier.trainable_parameters(), lr=0.1)
    classifier.train()
    assert not classifier.encoder.training and classifier.head.training
    loss = nn.BCEWithLogitsLoss()(classifier(torch.randn(4, 1, 24, 24)), torch.eye(5)[[0, 1, 2, 3]])
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in classifier.encoder.state_dict().items())
    assert {id(p) for p in classifier.trainable_parameters()} == {id(p) for p in classifier.head.parameters()}


class OffsetFeatures(nn.Module):
    """A frozen "encoder" whose features look like the mean-pooled ViT's: a large common part (0.8 per feature)
    plus small image-to-image differences (std 0.03); the input images are those differences, unscaled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.8 + 0.03 * x.flatten(1)


def _train_head(classifier: SequenceClassifier, features: torch.Tensor, labels: torch.Tensor, learning_rate: float,
                epochs: int = 10, batch: int = 32) -> float:
    """The bundle's head training (AdamW without weight decay, cosine schedule, BCE on one-hot labels); the mean
    one-vs-rest ROC-AUC of the trained classifier on the same features."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(classifier.trainable_parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    targets = torch.eye(5)[labels]
    for _ in range(epochs):
        classifier.train()
        for index in torch.randperm(len(labels)).split(batch):
            loss = nn.functional.binary_cross_entropy_with_logits(classifier(features[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    classifier.eval()
    with torch.no_grad():
        scores = classifier(features).numpy()
    return float(np.mean([roc_auc(scores[:, c], (labels == c).numpy()) for c in range(5)]))


def test_linear_probe_learns_from_features_with_a_large_common_part_in_the_configured_budget():
    """Linearly separable frozen features, the ViT's scale (see OffsetFeatures): with the standardisation and
    linear_probe.json's learning rate the head separates the classes in 10 epochs (50 steps); the former head (raw
    features, lr 1e-3) stays far from it in the same budget (the demo's probe predicted one class for every image)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(160) % 5
    centres = torch.randn(5, 16, generator=generator)
    features = centres[labels] + 0.3 * torch.randn(160, 16, generator=generator)
    config = json.loads((BUNDLE_CONFIGS / "linear_probe.json").read_text())
    tiny = {**TINY_VIT, "hidden_size": 16}

    def classifier():
        probe = SequenceClassifier(encoder_config=tiny, num_classes=5, freeze_encoder=config["freeze_encoder"])
        probe.encoder = OffsetFeatures()
        return probe

    assert _train_head(classifier(), features, labels, config["learning_rate"]) > 0.99
    former = classifier()
    former.feature_norm = nn.Identity()
    assert _train_head(former, features, labels, 1e-3) < 0.9


def test_linear_probe_standardisation_keeps_fine_tuned_checkpoints_and_takes_a_batch_of_one():
    fine_tuned = SequenceClassifier(encoder_config=TINY_VIT, num_classes=5)
    assert not any(key.startswith("feature_norm") for key in fine_tuned.state_dict())
    probe = SequenceClassifier(encoder_config=TINY_VIT, num_classes=5, freeze_encoder=True).train()
    assert probe.trainable_parameters() == list(probe.head.parameters())  # the standardisation has no weights
    probe(torch.randn(8, 1, 24, 24))
    running = probe.feature_norm.running_mean.clone()
    one = probe(torch.randn(1, 1, 24, 24))  # a label fraction's short last batch: running statistics, no error
    assert one.shape == (1, 5) and torch.equal(probe.feature_norm.running_mean, running)
    probe.eval()
    x = torch.randn(3, 1, 24, 24)
    torch.testing.assert_close(torch.jit.script(probe)(x), probe(x))


def test_a_random_init_copy_of_the_vit_redraws_its_position_embeddings_as_monai_does():
    from mri_ssl.metrics.representation_probe import random_init_copy

    model = SimSiamModel(encoder_config=TINY_VIT, projection_dim=16, predictor_hidden=4)
    embeddings = model.encoder.vit.patch_embedding.position_embeddings
    with torch.no_grad():
        embeddings.add_(5.0)  # as if trained far from the initialisation
    fresh = random_init_copy(model, seed=3)
    redrawn = fresh.encoder.vit.patch_embedding.position_embeddings
    assert float(redrawn.abs().max()) <= 2.0 and float(redrawn.std()) == pytest.approx(0.02, abs=0.005)
    assert float(embeddings.mean()) == pytest.approx(5.0, abs=0.01)  # the original is untouched
    for a, b in zip(random_init_copy(model, seed=3).parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b)  # seeded
