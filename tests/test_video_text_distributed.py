"""The video-text trainer under torch.distributed (2 CPU processes, gloo, file store): equal collectives per rank,
a mismatch is an error and not a hang, and validation equals the single-process value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rank_processes import run_ranks

WORKER = Path(__file__).with_name("distributed_video_text_worker.py")


def run_worker(out_dir: Path) -> list[dict]:
    run_ranks(WORKER, out_dir, [out_dir])
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
def test_two_ranks_train_in_step_and_validate_like_one_process(ranks):
    from distributed_video_text_worker import pairs, tiny_model
    from torch.utils.data import DataLoader

    trained = [r["train"] for r in ranks]
    assert [r["error"] for r in trained] == ["", ""]
    assert [h["epoch"] for h in trained[0]["history"]] == [1, 2]
    for name, tensor in trained[0]["weights"].items():  # DDP kept the replicas identical
        torch.testing.assert_close(trained[1]["weights"][name], tensor, msg=name)
    # Validation ran without gathering on each rank, so it is the single-process value of the final weights.
    model = tiny_model()
    model.load_state_dict(trained[0]["weights"])
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(pairs(5, seed=99), batch_size=2):
            if len(batch["ids"]) < 2:
                continue
            out = model(batch["video"], batch["ids"])
            total += float(model.loss(out["video"], out["text"])) * len(batch["ids"])
            count += len(batch["ids"])
    for r in trained:
        assert r["history"][-1]["val_loss"] == pytest.approx(total / count, rel=1e-5)
    assert trained[0]["history"] == trained[1]["history"]


@pytest.mark.slow
def test_unequal_batches_per_rank_are_refused_on_every_rank(ranks):
    for r in ranks:
        assert "different numbers of batches per epoch [2, 3]" in r["unequal"]["error"]


@pytest.mark.slow
def test_a_short_last_batch_is_refused_under_distributed(ranks):
    for r in ranks:
        assert "last batch would hold 1 of 2 studies" in r["ragged"]["error"]


@pytest.mark.slow
def test_process_group_timeout_turns_a_missing_collective_into_an_error(ranks):
    error = ranks[0]["mismatch"]["error"]
    assert error, "the unmatched all-reduce returned instead of failing"
    assert "timed out" in error.lower() or "timeout" in error.lower(), error
