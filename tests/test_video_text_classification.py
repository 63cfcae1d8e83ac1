"""The CMR disease classifier on the video encoder (cmr_video_text's classify.json): label fractions drawn per study
and disease label, the batch preparation, the pretrained / from-scratch encoder, the optimiser's parameter groups, and
the bundle's train + evaluate stages end to end."""

from __future__ import annotations

import json

import pytest
import torch

from mri_ssl.data.cardiac.cmr_studies import CMR_DEMO, DISEASE_LABELS, load_cmr_manifest
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.engines.video_text import build_video_text_model, checkpoint_extras
from mri_ssl.engines.video_text.classification import (DiseaseBatch, check_disease_labels, classifier_video_encoder,
                                                       label_fraction_manifest)
from mri_ssl.errors import InputError
from mri_ssl.networks import EncoderClassifier
from mri_ssl.text.tokenizer import WordTokenizer
from bundle_runner import bundle_dir, run_bundle, write_override

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

TINY_VIDEO = {"cnn_features": [4, 8], "temporal_layers": 1, "temporal_heads": 2}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmr")
    return load_cmr_manifest(resolve_datalist("", folder, CMR_DEMO, studies=20, cine_frames=4, lge_slices=2,
                                              matrix=16, progress=False))


def test_label_fraction_keeps_whole_studies_seeded_nested_and_every_label(manifest):
    training = manifest["training"]
    assert len(training) >= 10
    label_of = {study["study_id"]: study["label"] for study in manifest["studies"]}
    per_label = {label: sum(label_of[s] == label for s in training) for label in set(map(label_of.get, training))}
    small = label_fraction_manifest(manifest, 0.1, seed=3)["training"]
    larger = label_fraction_manifest(manifest, 0.5, seed=3)["training"]
    # per label: max(1, round(fraction * n)) of its n studies, so even the smallest fraction has every label
    for fraction, chosen in [(0.1, small), (0.5, larger)]:
        assert {label: sum(label_of[s] == label for s in chosen) for label in per_label} == {
            label: max(1, round(fraction * n)) for label, n in per_label.items()}
    assert set(small) <= set(larger) <= set(training)  # nested, and only training studies
    assert small == [s for s in training if s in set(small)]  # in the manifest's order
    assert label_fraction_manifest(manifest, 0.1, seed=3)["training"] == small  # reproducible
    draws = {tuple(label_fraction_manifest(manifest, 0.5, seed=seed)["training"]) for seed in range(5)}
    assert len(draws) > 1  # the seed decides which studies
    cut = label_fraction_manifest(manifest, 0.1, seed=3)
    assert cut["validation"] == manifest["validation"] and cut["test"] == manifest["test"]
    assert label_fraction_manifest(manifest, 1.0)["training"] == training
    with pytest.raises(InputError, match="label_fraction"):
        label_fraction_manifest(manifest, 0.0)


def test_disease_labels_checked_and_batches_one_hot(manifest):
    check_disease_labels(manifest, ["training", "validation", "test"])
    unlabelled = {**manifest, "studies": [dict(manifest["studies"][0], label=None), *manifest["studies"][1:]]}
    first = manifest["studies"][0]
    split = next(name for name in ("training", "validation", "test") if first["study_id"] in manifest[name])
    with pytest.raises(InputError, match=first["study_id"]):
        check_disease_labels(unlabelled, [split])
    video, target = DiseaseBatch()({"video": torch.zeros(3, 4, 1, 8, 8), "label": torch.tensor([0, 3, 1])})
    assert video.shape == (3, 4, 1, 8, 8)
    torch.testing.assert_close(target, torch.eye(len(DISEASE_LABELS))[[0, 3, 1]])
    with pytest.raises(InputError, match="label"):
        DiseaseBatch()({"video": torch.zeros(1, 4, 1, 8, 8), "label": torch.tensor([-1])})


def test_classifier_encoder_pretrained_or_drawn_from_the_seed(tmp_path):
    tokenizer = WordTokenizer.build(["normal ventricle", "dilated ventricle"], max_length=8)
    config = {"embed_dim": 8, "seed": 4, "video_config": TINY_VIDEO,
              "text_config": {"width": 8, "layers": 1, "heads": 2}}
    trained = build_video_text_model(tokenizer, **config)
    with torch.no_grad():
        trained.video_encoder.norm.bias.fill_(0.5)  # a "trained" weight no fresh draw has
    path = tmp_path / "best.pt"
    torch.save({"network": trained.state_dict(), **checkpoint_extras(tokenizer, config)}, path)
    loaded = classifier_video_encoder(path, pretrained=True)
    torch.testing.assert_close(loaded.state_dict(), trained.video_encoder.state_dict())
    # from scratch: the untrained video-text model's video encoder of the same seed (the evaluation's reference)
    scratch = classifier_video_encoder(path, pretrained=False, video_config=TINY_VIDEO, seed=4)
    torch.testing.assert_close(scratch.state_dict(), build_video_text_model(tokenizer, **config).video_encoder
                               .state_dict())
    probe = EncoderClassifier(scratch, num_classes=4, freeze_encoder=True).train()
    assert [name for name, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert not probe.encoder.training and probe(torch.rand(2, 4, 1, 16, 16)).shape == (2, 4)


def test_parameter_groups_head_at_its_rate_and_a_trained_encoder_at_its_own():
    encoder = classifier_video_encoder("", pretrained=False, video_config=TINY_VIDEO, seed=0)
    probe = EncoderClassifier(encoder, num_classes=4, freeze_encoder=True)
    groups = probe.parameter_groups(0.01, 0.001)
    assert len(groups) == 1 and groups[0]["lr"] == 0.01  # the linear probe: the head only
    assert {id(p) for p in groups[0]["params"]} == {id(probe.head.weight), id(probe.head.bias)}
    tuned = EncoderClassifier(encoder.requires_grad_(True), num_classes=4, freeze_encoder=False,
                              standardise_features=True)
    head, trained = tuned.parameter_groups(0.01, 0.001)
    assert (head["lr"], trained["lr"]) == (0.01, 0.001)
    assert len(head["params"]) == 2 and len(trained["params"]) == len(list(encoder.parameters()))
    assert isinstance(tuned.feature_norm, torch.nn.BatchNorm1d)  # the probe's standardisation kept


def test_bundle_classifier_trains_at_a_label_fraction_and_writes_mean_auc(tmp_path):
    configs = bundle_dir("cmr_video_text") / "configs"
    tiny = write_override(tmp_path, demo_studies=20, demo_cine_frames=4, demo_lge_slices=2, image_size=16,
                          num_frames=4, progress_bar=False, pretrained=False, label_fraction=0.25, num_epochs=2,
                          classifier_batch_size=4, freeze_encoder=False, **TINY_VIDEO)  # supervised from scratch
    run = run_bundle(tmp_path, [configs / "classify.json", tiny])
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "models" / "classifier" / "best.pt").is_file()
    run = run_bundle(tmp_path, [configs / "classify.json", configs / "classify_evaluate.json", tiny])
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "logs" / "evaluation" / "metrics.json").read_text())
    manifest = json.loads(next((tmp_path / "demo_data").rglob("manifest.json")).read_text())
    assert metrics["images"] == len(manifest["test"]) and 0.0 <= metrics["mean_auc"] <= 1.0
    assert set(metrics["auc"]) == set(DISEASE_LABELS)
