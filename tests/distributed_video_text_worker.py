"""Worker for the distributed video-text trainer tests: 2 CPU processes (gloo) meeting through a file store.

Started once per rank by ``tests/rank_processes.run_ranks`` (file store, no port):
``python tests/distributed_video_text_worker.py OUT_DIR``. Every rank writes
``OUT_DIR/rank<k>.pt`` with the outcome of three steps, in this order:

1. ``train``: two epochs of ``VideoTextTrainer`` on a DistributedDataParallel model: the history and the final
   weights, which must be the same on every rank.
2. ``unequal``: rank 1 gets one training batch more than rank 0; the trainer must refuse before the first batch on
   every rank (``InputError``), instead of one rank waiting in a collective for ever.
3. ``ragged``: a loader without drop_last whose last batch is short; refused when the trainer is built.
4. ``mismatch``: in a group with a 5 s timeout, rank 0 runs an all-reduce that rank 1 never joins; rank 0 must fail
   with a timeout error instead of hanging.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mri_ssl.errors import InputError
from rank_processes import end_worker, init_from_environment

VOCAB, LENGTH, FRAMES, SIZE = 20, 6, 4, 16


def pairs(count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.rand(FRAMES, 1, SIZE, SIZE, generator=g),
             "ids": torch.cat([torch.tensor([2]), torch.randint(4, VOCAB, (LENGTH - 2,), generator=g),
                               torch.tensor([3])])} for _ in range(count)]


def tiny_model():
    from mri_ssl.networks.video_text import VideoTextModel

    torch.manual_seed(0)
    return VideoTextModel(VOCAB, 16, {"cnn_features": [4, 8], "temporal_layers": 1, "temporal_heads": 2},
                          {"width": 8, "layers": 1, "heads": 2, "max_length": LENGTH})


def train(rank: int, extra_batch: bool) -> dict:
    from mri_ssl.engines.video_text import VideoTextTrainer, video_text_optimizer

    model = tiny_model()
    network = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = video_text_optimizer(network, 1e-3, 0.05)
    batches = 2 + (1 if extra_batch and rank == 1 else 0)
    train_loader = DataLoader(pairs(2 * batches, seed=10 + rank), batch_size=2, drop_last=True)
    val_loader = DataLoader(pairs(5, seed=99), batch_size=2)  # the same 5 pairs on every rank: 2 + 2 + 1
    trainer = VideoTextTrainer("cpu", 2, train_loader, network, optimizer, val_data_loader=val_loader, seed=0)
    try:
        trainer.run()
    except InputError as error:
        return {"error": str(error)}
    return {"error": "", "history": trainer.history,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def ragged_last_batch() -> dict:
    from mri_ssl.engines.video_text import VideoTextTrainer, video_text_optimizer

    model = tiny_model()
    loader = DataLoader(pairs(5, seed=3), batch_size=2)  # 2 + 2 + 1
    try:
        VideoTextTrainer("cpu", 1, loader, model, video_text_optimizer(model), seed=0)
    except InputError as error:
        return {"error": str(error)}
    return {"error": ""}


def unmatched_all_reduce(rank: int, out_dir: Path) -> dict:
    group = dist.new_group(timeout=datetime.timedelta(seconds=5))
    flag = out_dir / "rank0_gave_up"
    if rank != 0:  # alive but never joining, as a rank busy elsewhere would be, until rank 0 has given up
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return {}
    try:
        dist.all_reduce(torch.ones(1), group=group)
        error = ""
    except Exception as caught:  # gloo raises RuntimeError / DistBackendError on timeout
        error = f"{type(caught).__name__}: {caught}"
    flag.touch()
    return {"error": error}


def main(out_dir: Path) -> None:
    rank, _ = init_from_environment(timeout_seconds=60)
    result = {"train": train(rank, extra_batch=False), "unequal": train(rank, extra_batch=True)}
    result["ragged"] = ragged_last_batch()
    result["mismatch"] = unmatched_all_reduce(rank, out_dir)
    torch.save(result, out_dir / f"rank{rank}.pt")
    end_worker()  # the timed-out group is broken; end_worker meets on the default group and leaves


if __name__ == "__main__":
    main(Path(sys.argv[1]))
