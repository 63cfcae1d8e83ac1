"""A killed video-text training run resumes from latest.pt with the right counters and ends where an uninterrupted
run ends (same weights, same history), through AtomicCheckpointer like the other bundles."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from mri_ssl.engines import AtomicCheckpointer, load_checkpoint
from mri_ssl.engines.video_text import (VideoTextTrainer, build_video_text_model, checkpoint_extras,
                                        load_video_text_model, video_text_optimizer)
from mri_ssl.text.tokenizer import WordTokenizer

REPORTS = ["the left ventricle is dilated", "normal size and function", "late enhancement of the septum"]
CONFIG = {"embed_dim": 16, "seed": 0, "video_config": {"cnn_features": [4, 8], "temporal_layers": 1,
                                                       "temporal_heads": 2},
          "text_config": {"width": 8, "layers": 1, "heads": 2}}
BATCHES_PER_EPOCH = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


class Killed(Exception):
    """Stands in for the process being killed in the middle of an epoch."""


def pairs(count: int, seed: int, tokenizer: WordTokenizer) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.rand(4, 1, 16, 16, generator=g),
             "ids": tokenizer(REPORTS[int(torch.randint(0, 3, (1,), generator=g))])[0]} for _ in range(count)]


def train(folder, max_epochs: int, resume: bool = False, kill_at_iteration: int | None = None):
    tokenizer = WordTokenizer.build(REPORTS, max_length=8)
    model = build_video_text_model(tokenizer, **CONFIG)
    optimizer = video_text_optimizer(model, 1e-3, 0.05)
    loader = DataLoader(pairs(2 * BATCHES_PER_EPOCH, 1, tokenizer), batch_size=2, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    val = DataLoader(pairs(4, 2, tokenizer), batch_size=2)
    trainer = VideoTextTrainer("cpu", max_epochs, loader, model, optimizer, val_data_loader=val,
                               history_path=folder / "history.json", seed=0)
    checkpointer = AtomicCheckpointer(folder, model, optimizer, metric_name="val_loss", export_encoder=False,
                                      extra_state=checkpoint_extras(tokenizer, CONFIG))
    checkpointer.attach(trainer)
    resumed_from = checkpointer.resume(trainer, when=resume)
    if kill_at_iteration is not None:
        @trainer.on(Events.ITERATION_STARTED(once=kill_at_iteration))
        def kill(_):
            raise Killed()
    trainer.run()
    return trainer, model, resumed_from


def test_killed_run_resumes_from_latest_and_matches_an_uninterrupted_run(tmp_path):
    straight, straight_model, _ = train(tmp_path / "straight", max_epochs=3)

    killed_dir = tmp_path / "killed"
    with pytest.raises(Killed):  # killed in the 2nd batch of epoch 2: latest.pt holds epoch 1
        train(killed_dir, max_epochs=3, kill_at_iteration=BATCHES_PER_EPOCH + 2)
    assert not (killed_dir / "final.pt").exists()
    latest = load_checkpoint(killed_dir / "latest.pt")
    assert (latest["epoch"], latest["iteration"]) == (1, BATCHES_PER_EPOCH)

    resumed, resumed_model, source = train(killed_dir, max_epochs=3, resume=True)
    assert source == killed_dir / "latest.pt"
    assert (resumed.state.epoch, resumed.state.iteration) == (3, 3 * BATCHES_PER_EPOCH)
    final = load_checkpoint(killed_dir / "final.pt")
    assert (final["epoch"], final["iteration"]) == (3, 3 * BATCHES_PER_EPOCH)
    history = json.loads((killed_dir / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history == straight.history  # the epochs before the kill kept, the rest recomputed identically
    for name, tensor in straight_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], tensor, msg=name)
    # the checkpoint rebuilds the model on its own (config and tokenizer inside)
    rebuilt, _ = load_video_text_model(killed_dir / "final.pt")
    for name, tensor in resumed_model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], tensor, msg=name)


def test_resume_without_checkpoints_starts_from_scratch(tmp_path):
    trainer, _, source = train(tmp_path, max_epochs=1, resume=True)
    assert source is None and trainer.state.epoch == 1
    assert [h["epoch"] for h in trainer.history] == [1]
