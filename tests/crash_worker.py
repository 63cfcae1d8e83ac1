"""A tiny training run in its own process, for the crash tests (tests/test_crash_safety.py).

    python crash_worker.py save-killed DIR
        writes DIR/latest.pt (step 1), then starts writing step 2 and is killed by SIGKILL half-way through.
    python crash_worker.py train DIR [--epochs N] [--epoch-length L] [--kill-at K] [--nan-at K] [--resume]
        trains a linear model with MONAI's SupervisedTrainer, AtomicCheckpointer and NonFiniteLossGuard on fixed
        data; appends "iteration loss" lines to DIR/losses.txt; SIGKILLs itself right after iteration K, or makes
        the loss NaN at iteration K.
"""

import argparse
import io
import logging
import os
import signal
import sys

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from mri_ssl.engines import AtomicCheckpointer, NonFiniteLossGuard, save_checkpoint


def save_killed(folder: str) -> None:
    save_checkpoint({"step": 1, "weights": torch.arange(1000.0)}, os.path.join(folder, "latest.pt"))
    real_save = torch.save

    def save_half_then_die(payload, destination):
        buffer = io.BytesIO()
        real_save(payload, buffer)
        data = buffer.getvalue()
        # save_checkpoint hands torch.save an open file; a path would do as well
        stream = destination if hasattr(destination, "write") else open(destination, "wb")
        stream.write(data[: len(data) // 2])
        stream.flush()
        os.fsync(stream.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_half_then_die
    save_checkpoint({"step": 2, "weights": torch.arange(100000.0)}, os.path.join(folder, "latest.pt"))


def data(epoch_length: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    true_weight = torch.tensor([[1.0, -2.0, 0.5]])
    batches = []
    for _ in range(epoch_length):
        x = torch.randn(4, 3, generator=generator)
        batches.append({"image": x, "label": x @ true_weight.T})
    return batches


def train(folder: str, epochs: int, epoch_length: int, kill_at: int | None, nan_at: int | None,
          resume: bool) -> None:
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)  # momentum: resume needs its state
    mse = torch.nn.MSELoss()

    def loss_function(prediction, target):
        loss = mse(prediction, target)
        return loss * float("nan") if trainer.state.iteration == nan_at else loss

    trainer = SupervisedTrainer(device="cpu", max_epochs=epochs, train_data_loader=data(epoch_length),
                                network=network, optimizer=optimizer, loss_function=loss_function, decollate=False)
    losses = open(os.path.join(folder, "losses.txt"), "a")
    epoch_losses = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def log(engine):
        loss = float(engine.state.output["loss"].detach())
        losses.write(f"{engine.state.iteration} {loss:.10f}\n")
        losses.flush()
        epoch_losses.append(loss)
        if engine.state.iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    @trainer.on(Events.EPOCH_COMPLETED)
    def mean_loss(engine):  # attached before the checkpointer, like a validation handler
        engine.state.metrics["train_loss"] = sum(epoch_losses) / len(epoch_losses)
        epoch_losses.clear()

    NonFiniteLossGuard().attach(trainer)
    checkpointer = AtomicCheckpointer(folder, network, optimizer, metric_name="train_loss", export_encoder=False)
    checkpointer.attach(trainer)
    checkpointer.resume(trainer, when=resume)
    try:
        trainer.run()
    finally:
        losses.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["save-killed", "train"])
    parser.add_argument("folder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-length", type=int, default=3)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--nan-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    if args.mode == "save-killed":
        save_killed(args.folder)
    else:
        train(args.folder, args.epochs, args.epoch_length, args.kill_at, args.nan_at, args.resume)


if __name__ == "__main__":
    main()
