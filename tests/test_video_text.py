"""Video-text pieces: tokenizer, encoders, linear probe maths, the study dataset, and the bundle end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from torch.utils.data import DataLoader

from mri_ssl.data.cardiac.cmr_studies import CMR_DEMO, load_cmr_manifest
from mri_ssl.data.cardiac.video_dataset import CMRVideoTextDataset, load_study_frames
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.engines import load_checkpoint
from mri_ssl.engines.video_text import VideoTextTrainer, load_video_text_model
from mri_ssl.errors import InputError
from mri_ssl.metrics.linear_probe import linear_probe
from mri_ssl.networks.video_text import DividedSpaceTimeBlock, TextEncoder, VideoEncoder, VideoTextModel
from mri_ssl.text.tokenizer import CLS_ID, PAD_ID, SEP_ID, UNK_ID, WordTokenizer, split_words
from bundle_runner import bundle_dir, run_bundle, write_override

REPORTS = ["The left ventricle is dilated, EF 39%.", "Normal LV size. EF 62%.", "Patchy late enhancement."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_tokenizer_rules():
    assert split_words("EF 39%. Infero-septal") == ["ef", "3", "9", "%", ".", "infero-septal"]
    tok = WordTokenizer.build(REPORTS, max_length=8)
    assert tok.vocabulary[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    assert tok.vocabulary[4:7] == [".", "%", "ef"]  # most frequent first: "." x4, then "%" and "ef" x2, alphabetical
    ids = tok("EF 93% amyloid")[0].tolist()
    assert ids[0] == CLS_ID and ids[5] == UNK_ID and ids[6] == SEP_ID and ids[7] == PAD_ID  # unseen word -> UNK
    long = tok("ef " * 20)[0].tolist()
    assert len(long) == 8 and long[0] == CLS_ID and long[-1] == SEP_ID  # truncation keeps [SEP]
    assert WordTokenizer.build(reversed(REPORTS)).vocabulary == WordTokenizer.build(REPORTS).vocabulary


def test_tokenizer_save_load(tmp_path):
    tok = WordTokenizer.build(REPORTS)
    loaded = WordTokenizer.load(tok.save(tmp_path / "tokenizer.json"))
    assert loaded.vocabulary == tok.vocabulary and torch.equal(loaded(REPORTS), tok(REPORTS))
    with pytest.raises(InputError, match="not found"):
        WordTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "truncated.json").write_text(tok.save(tmp_path / "t.json").read_text()[:20])
    with pytest.raises(InputError, match="truncated.json.*not a tokenizer file"):
        WordTokenizer.load(tmp_path / "truncated.json")


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=20, width=16, layers=1, heads=2, max_length=12).eval()
    ids = torch.tensor([[CLS_ID, 5, 6, 7, SEP_ID, PAD_ID, PAD_ID, PAD_ID]])
    torch.testing.assert_close(encoder(ids), encoder(ids[:, :5]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(encoder(ids), encoder(ids.roll(1, dims=1)))


def test_video_model_shapes_and_frame_order():
    torch.manual_seed(0)
    model = VideoTextModel(vocab_size=30, embed_dim=512,
                           video_config={"cnn_features": [4, 8], "temporal_layers": 1, "temporal_heads": 2},
                           text_config={"width": 16, "layers": 1, "heads": 2, "max_length": 10}).eval()
    video = torch.rand(3, 4, 1, 16, 16)
    out = model(video, torch.randint(4, 30, (3, 10)))
    assert out["video"].shape == (3, 512) and out["text"].shape == (3, 512)
    torch.testing.assert_close(out["video"].norm(dim=1), torch.ones(3))
    # the temporal position embedding makes the encoder see frame order
    assert not torch.allclose(model.embed_video(video), model.embed_video(video.flip(1)), atol=1e-6)
    assert [n for n in dict(model.named_parameters()) if "logit_scale" in n] == ["loss.log_logit_scale"]
    with pytest.raises(InputError, match="video"):
        VideoEncoder(cnn_features=[4, 8], temporal_heads=2)(torch.rand(2, 4, 16, 16))


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 6) * 6
    labels = np.repeat(np.arange(4), 10)
    features = centres[labels] + rng.normal(size=(40, 6))
    result = linear_probe(features[::2], labels[::2], features[1::2], labels[1::2], ["a", "b", "c", "d"])
    assert result["accuracy"] == 1.0 and result["macro_auc"] == 1.0 and result["macro_f1"] == 1.0
    shuffled = linear_probe(features[::2], rng.permutation(labels[::2]), features[1::2], labels[1::2], "abcd")
    assert shuffled["accuracy"] < 0.8


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmr")
    return load_cmr_manifest(resolve_datalist("", folder, CMR_DEMO, studies=8, cine_frames=4, lge_slices=2, matrix=16,
                                              progress=False))


def test_study_frames_concatenate_series_in_order(tiny_manifest):
    study = tiny_manifest["studies"][0]
    both = load_study_frames(tiny_manifest["root"], study, ("cine", "lge"), image_size=16)
    cine = load_study_frames(tiny_manifest["root"], study, ("cine",), image_size=16)
    assert both.shape == (4 + 4 + 2 + 1, 16, 16) and cine.shape == (8, 16, 16)
    torch.testing.assert_close(both[:8], cine)
    assert load_study_frames(tiny_manifest["root"], study, ("cine",), image_size=8).shape == (8, 8, 8)
    with pytest.raises(InputError, match="series_types"):
        load_study_frames(tiny_manifest["root"], study, ("flair",))


def test_dataset_items(tiny_manifest):
    tok = WordTokenizer.build([s["report"] for s in tiny_manifest["studies"]])
    data = CMRVideoTextDataset(tiny_manifest, "training", tok, num_frames=16, mode="eval", image_size=16)
    item = data[0]
    assert item["video"].shape == (16, 1, 16, 16) and item["ids"].shape == (tok.max_length,)
    assert item["ids"][0] == CLS_ID and 0 <= item["label"] < 4
    with pytest.raises(InputError, match="num_frames"):
        CMRVideoTextDataset(tiny_manifest, "training", tok, num_frames=6)


@pytest.mark.slow
def test_bundle_train_and_evaluate(tmp_path):
    root = bundle_dir("cmr_video_text")
    tiny = write_override(tmp_path, demo_studies=12, demo_cine_frames=4, demo_lge_slices=2, image_size=16,
                          cnn_features=[4, 8], temporal_layers=1, temporal_heads=2, text_width=16, text_layers=1,
                          text_heads=2, embed_dim=32, batch_size=4, max_epochs=2, num_frames=4, progress_bar=False)
    configs = root / "configs"
    run = run_bundle(tmp_path, [configs / "train.json", tiny])
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = tmp_path / "models" / "frames4_cine_lge_seed0"
    history = json.loads((ckpt / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["train_loss"]) for h in history)
    assert all(h["logit_scale"] <= 100 for h in history)
    # resume=true trains on from the finished run's checkpoint: epoch 3 only, the earlier records kept (a marker
    # put in them survives; a run from scratch would rewrite them)
    per_epoch = load_checkpoint(ckpt / "final.pt")["iteration"] // 2
    marked = [{**h, "marker": h["epoch"]} for h in history]
    (ckpt / "history.json").write_text(json.dumps({"history": marked, "world_size": 1}))
    more = write_override(tmp_path, "more.json", max_epochs=3, resume=True)
    run = run_bundle(tmp_path, [configs / "train.json", tiny, more])
    assert run.returncode == 0, run.stderr[-3000:]
    history = json.loads((ckpt / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and [h.get("marker") for h in history] == [1, 2, None]
    final = load_checkpoint(ckpt / "final.pt")
    assert (final["epoch"], final["iteration"]) == (3, 3 * per_epoch) and per_epoch >= 1
    run = run_bundle(tmp_path, [configs / "train.json", configs / "evaluate.json", tiny])
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "logs" / "frames4_cine_lge_seed0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["model"] for r in metrics["retrieval"]] == ["zero-shot (untrained)", "frames4_cine_lge_seed0"]
    for row in metrics["retrieval"]:
        assert 0 <= row["t2v_R@1"] <= 100 and row["RSUM"] <= 600 and row["num_queries"] >= 1
    assert (out / "retrieval.md").read_text().startswith("| model |")
    # the training run's validation probe: step 0 and every epoch, and the evaluated checkpoint is its best.pt
    probe = metrics["validation_probe"]
    assert probe["start"]["epoch"] == 0 and probe["end"]["epoch"] == 3 and metrics["checkpoint"].endswith("best.pt")
    assert probe["untrained_reference"]["clip_loss_chance"] == pytest.approx(np.log(probe["start"]["n"]))
    assert (out / "linear_probe.csv").is_file() and (out / "embedding_pca.png").stat().st_size > 0

    # The standalone inference.json with this run's own weights and vocabulary (both in the trainer checkpoint).
    own = write_override(tmp_path, "own.json", checkpoint=str(ckpt / "final.pt"), tokenizer_file=str(ckpt / "final.pt"))
    run = run_bundle(tmp_path, [configs / "inference.json", tiny, own])
    assert run.returncode == 0, run.stderr[-3000:]
    rankings = json.loads((tmp_path / "predictions" / "rankings.json").read_text())["rankings"]
    test_ids = metrics["retrieval"][0]["num_queries"]
    assert len(rankings) == test_ids
    for ranked in rankings.values():
        scores = [r["score"] for r in ranked]
        assert scores == sorted(scores, reverse=True) and all(-1 - 1e-6 <= x <= 1 + 1e-6 for x in scores)
    embeddings = np.load(tmp_path / "predictions" / "embeddings.npz")
    np.testing.assert_allclose(np.linalg.norm(embeddings["video"], axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_bundle_two_process_training(tmp_path):
    """multi_gpu_train.json under torchrun with 2 CPU ranks. The process group times out after 60 s and the whole
    torchrun process group is killed after 300 s, so a collective mismatch fails the test instead of stalling CI."""
    root = bundle_dir("cmr_video_text")
    tiny = write_override(tmp_path, demo_studies=12, demo_cine_frames=4, demo_lge_slices=2, image_size=16,
                          cnn_features=[4, 8], temporal_layers=1, temporal_heads=2, text_width=16, text_layers=1,
                          text_heads=2, embed_dim=32, batch_size=2, max_epochs=1, num_frames=4, progress_bar=False,
                          dist_timeout_seconds=60)
    configs = root / "configs"
    # the demo data are written by one process first, as docs/README.md says
    manifest = load_cmr_manifest(resolve_datalist("", tmp_path / "demo_data", CMR_DEMO, studies=12, cine_frames=4,
                                                  lge_slices=2, matrix=16, progress=False))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = run_bundle(tmp_path, [configs / "train.json", configs / "multi_gpu_train.json", tiny], launcher=launcher,
                     timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = tmp_path / "models" / "frames4_cine_lge_seed0"
    summary = json.loads((ckpt / "history.json").read_text())
    assert summary["world_size"] == 2 and np.isfinite(summary["history"][0]["train_loss"])
    # validation has no collectives: the logged value is the single-process loss of the final weights
    model, tok = load_video_text_model(ckpt / "final.pt")
    val = CMRVideoTextDataset(manifest, "validation", tok, num_frames=4, mode="eval", image_size=16)
    trainer = VideoTextTrainer("cpu", 1, DataLoader(val, batch_size=2), model, torch.optim.SGD(model.parameters()),
                               val_data_loader=DataLoader(val, batch_size=2))
    assert trainer.validation_loss() == pytest.approx(summary["history"][0]["val_loss"], rel=1e-5)


def test_video_encoder_with_cardiac_vit_frames():
    torch.manual_seed(0)
    encoder = VideoEncoder(frame_encoder="vit", temporal_layers=1, temporal_heads=2,
                           vit_config={"img_size": 16, "patch_size": 8, "hidden_size": 16, "mlp_dim": 32,
                                       "num_layers": 1, "num_heads": 2})
    assert encoder(torch.rand(2, 4, 1, 16, 16)).shape == (2, 16)
    with pytest.raises(InputError, match="frame_encoder"):
        VideoEncoder(frame_encoder="resnet")


def test_divided_space_time_encoder_shapes_and_difference_from_temporal():
    video = torch.rand(2, 4, 1, 16, 16)
    encoders = {}
    for attention in ("temporal", "divided"):
        torch.manual_seed(0)
        encoders[attention] = VideoEncoder(cnn_features=[4, 8], temporal_layers=1, temporal_heads=2,
                                           attention=attention).eval()
    divided = encoders["divided"]
    assert divided(video).shape == (2, 8) and isinstance(divided.temporal[0], DividedSpaceTimeBlock)
    tokens, grid = divided.frame_tokens(video.flatten(0, 1))
    assert tokens.shape == (8, 64, 8) and grid == (8, 8)  # 16x16 frames, one 2x pool: 8x8 positions of width 8
    # the same frame encoder (same seed) but a different head: the outputs differ
    torch.testing.assert_close(divided.frame_encoder(video[0]), encoders["temporal"].frame_encoder(video[0]))
    assert not torch.allclose(divided(video), encoders["temporal"](video), atol=1e-4)
    assert not torch.allclose(divided(video), divided(video.flip(1)), atol=1e-6)  # frame order is seen
    torch.manual_seed(0)
    vit = VideoEncoder(frame_encoder="vit", temporal_layers=1, temporal_heads=2, attention="divided",
                       vit_config={"img_size": 16, "patch_size": 8, "hidden_size": 16, "mlp_dim": 32,
                                   "num_layers": 1, "num_heads": 2})
    assert vit(video).shape == (2, 16) and vit.frame_tokens(video.flatten(0, 1))[0].shape == (8, 4, 16)
    with pytest.raises(InputError, match="attention"):
        VideoEncoder(cnn_features=[4, 8], temporal_heads=2, attention="joint")
    with pytest.raises(InputError, match="divisible by 4"):
        VideoEncoder(cnn_features=[4, 6], temporal_heads=2, attention="divided")


def _silence(block: DividedSpaceTimeBlock, *parts: str) -> DividedSpaceTimeBlock:
    with torch.no_grad():
        for part in parts:
            for parameter in getattr(block, part).parameters():
                parameter.zero_()
    return block


def test_divided_block_attends_over_time_at_one_position_then_within_one_frame():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 8)  # (B, T frames, S positions, C)
    bumped = x.clone()
    bumped[0, 0, 0] += torch.randn(8)  # change frame 0, position 0 (not by a constant: LayerNorm removes that)
    # time attention only (space attention and MLP zeroed): the change reaches position 0 of every frame, no other
    time_only = _silence(DividedSpaceTimeBlock(8, 2).eval(), "space_attention", "mlp")
    changed = (time_only(bumped) - time_only(x)).abs().sum(-1)[0] > 1e-6
    assert changed[:, 0].all() and not changed[:, 1:].any()
    # space attention only: the change reaches every position of frame 0, no other frame
    space_only = _silence(DividedSpaceTimeBlock(8, 2).eval(), "time_attention", "mlp")
    changed = (space_only(bumped) - space_only(x)).abs().sum(-1)[0] > 1e-6
    assert changed[0].all() and not changed[1:].any()
    # both (time, then space): every token of every frame
    full = DividedSpaceTimeBlock(8, 2).eval()
    assert ((full(bumped) - full(x)).abs().sum(-1) > 1e-6).all()


def test_divided_attention_setting_survives_the_checkpoint(tmp_path):
    from mri_ssl.engines.checkpoint import save_checkpoint
    from mri_ssl.engines.video_text import build_video_text_model, checkpoint_extras

    tok = WordTokenizer.build(REPORTS)
    config = {"embed_dim": 16, "video_config": {"cnn_features": [4, 8], "temporal_layers": 1, "temporal_heads": 2,
                                                "attention": "divided"},
              "text_config": {"width": 8, "layers": 1, "heads": 2}}
    model = build_video_text_model(tok, **config).eval()
    save_checkpoint({"network": model.state_dict(), **checkpoint_extras(tok, config)}, tmp_path / "final.pt")
    loaded, _ = load_video_text_model(tmp_path / "final.pt")
    video = torch.rand(2, 4, 1, 16, 16)
    assert loaded.video_encoder.attention == "divided"
    torch.testing.assert_close(loaded.embed_video(video), model.embed_video(video))


def test_text_augmentation_keeps_every_sentence_and_frame_augmentation_is_seeded(tiny_manifest):
    from mri_ssl.data.cardiac.video_dataset import shuffle_sentences

    report = "Dilated left ventricle; EF 39%. Thin walls (6 mm). No late gadolinium enhancement. RV size is normal."
    shuffled = {shuffle_sentences(report, np.random.RandomState(seed)) for seed in range(20)}
    assert len(shuffled) > 3
    words = sorted(report.replace(".", "").split())
    assert all(sorted(s.replace(".", "").split()) == words for s in shuffled)  # the same words, reordered
    tok = WordTokenizer.build([s["report"] for s in tiny_manifest["studies"]])
    plain = CMRVideoTextDataset(tiny_manifest, "training", tok, num_frames=4, image_size=16, seed=5)
    augmented = [CMRVideoTextDataset(tiny_manifest, "training", tok, num_frames=4, image_size=16, seed=5,
                                     frame_augment=True, text_augment=True) for _ in range(2)]
    first, again = augmented[0][0], augmented[1][0]
    torch.testing.assert_close(first["video"], again["video"])  # the same seed, the same draw
    assert torch.equal(first["ids"], again["ids"]) and first["video"].shape == plain[0]["video"].shape
    draws = [augmented[0][0]["video"] for _ in range(4)]
    assert any(not torch.allclose(draws[0], d) for d in draws[1:])  # later draws differ
    evaluation = CMRVideoTextDataset(tiny_manifest, "validation", tok, num_frames=4, mode="eval", image_size=16,
                                     frame_augment=True, text_augment=True)
    assert evaluation.augment is None and not evaluation.text_augment  # never on held-out data
