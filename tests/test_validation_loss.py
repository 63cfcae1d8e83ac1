"""The pretraining validation loss: the same fixed views every epoch, and under torch.distributed no collectives and
the single-process value."""

import torch

import mri_ssl.losses.two_view as two_view
from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer, ValidationLoss, local_loss
from mri_ssl.losses import NTXentLoss
from mri_ssl.networks import ContrastiveReconstructionModel


class NoisyPair:
    """Two noisy copies of the input as views (seeded through ``set_random_state`` like ContrastiveViewPair)."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def set_random_state(self, seed):
        self.generator.manual_seed(seed)

    def __call__(self, x):
        noise = [torch.randn(x.shape, generator=self.generator) * 0.1 for _ in range(2)]
        return {"view1": x + noise[0], "view2": x + noise[1], "target1": x, "target2": x}


def make_trainer():
    torch.manual_seed(0)
    network = ContrastiveReconstructionModel(features=(4, 8), dropout=0.0, projection_hidden=8, projection_dim=4,
                                             reconstruction_channels=(4,))
    loader = [{"image": torch.randn(3, 1, 8, 8, 8)}]
    trainer = ContrastiveTrainer("cpu", 1, loader, network, torch.optim.SGD(network.parameters(), lr=0.1),
                                 NoisyPair(), NTXentLoss(temperature=0.5), input_keys=("image",))
    return trainer, ValidationLoss(loader, NoisyPair(), seed=7)


def test_validation_is_repeatable_and_restores_the_trainer():
    trainer, validation = make_trainer()
    loss, network, pair = trainer.contrastive_loss, trainer.network, trainer.view_pair
    validation(trainer)
    first = trainer.state.metrics["val_loss"]
    validation(trainer)
    assert trainer.state.metrics["val_loss"] == first  # the same views every time
    assert (trainer.contrastive_loss, trainer.network, trainer.view_pair) == (loss, network, pair)
    assert loss.gather_distributed  # training still gathers


def test_validation_does_not_gather_under_distributed(monkeypatch):
    """With a world of 2 a gathering loss would call torch.distributed (not initialised here, so it would raise);
    the validation loss must not, and must give the single-process value."""
    trainer, validation = make_trainer()
    validation(trainer)
    single = trainer.state.metrics["val_loss"]
    monkeypatch.setattr(two_view, "world_size", lambda: 2)
    validation(trainer)
    assert trainer.state.metrics["val_loss"] == single


def test_local_loss_copies_only_gathering_losses():
    gathering = NTXentLoss()
    local = local_loss(gathering)
    assert local is not gathering and not local.gather_distributed and gathering.gather_distributed
    plain = torch.nn.L1Loss()
    assert local_loss(plain) is plain
