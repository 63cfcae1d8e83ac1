"""Checkpoint files: atomic, loaded with weights_only, clear errors; encoder export round trip; bundle switches."""

import os

import pytest
import torch

from mri_ssl.engines import export_encoder, load_checkpoint, load_encoder, save_checkpoint
from mri_ssl.errors import InputError
from mri_ssl.networks import CNNEncoder3D
from mri_ssl.parameters import as_flag


def test_round_trip_and_no_partial_files(tmp_path):
    payload = {"network": {"w": torch.arange(3.0)}, "epoch": 4}
    save_checkpoint(payload, tmp_path / "latest.pt")
    loaded = load_checkpoint(tmp_path / "latest.pt")
    assert loaded["epoch"] == 4 and torch.equal(loaded["network"]["w"], torch.arange(3.0))
    assert os.listdir(tmp_path) == ["latest.pt"]


class NotPlainData:
    """Any class outside torch's weights_only allow-list; its unpickling could run arbitrary code."""


def test_unsafe_or_damaged_checkpoints_are_refused_with_the_file_name(tmp_path):
    # A pickled arbitrary object is what weights_only=True exists to refuse (it could run code on load).
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"hook": NotPlainData()}, unsafe)
    with pytest.raises(InputError, match="unsafe.pt"):
        load_checkpoint(unsafe)
    truncated = tmp_path / "cut.pt"
    save_checkpoint({"w": torch.randn(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(InputError, match="cut.pt"):
        load_checkpoint(truncated)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_encoder_export_rebuilds_the_same_network(tmp_path):
    encoder = CNNEncoder3D(features=(4, 8, 8), dropout=0.1).eval()
    export_encoder(encoder, tmp_path / "encoder.pt")
    rebuilt = load_encoder(tmp_path / "encoder.pt")
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(rebuilt(x), encoder(x))
    assert not rebuilt.training


def test_encoder_file_with_unexpected_content_is_refused(tmp_path):
    save_checkpoint({"config": {"features": [4, 8], "_target_": "os.system"}, "state_dict": {}}, tmp_path / "a.pt")
    with pytest.raises(InputError, match="unknown keys"):
        load_encoder(tmp_path / "a.pt")
    save_checkpoint({"weights": {}}, tmp_path / "b.pt")
    with pytest.raises(InputError, match="not an exported encoder"):
        load_encoder(tmp_path / "b.pt")
    encoder = CNNEncoder3D(features=(4, 8))
    save_checkpoint({"config": {**encoder.config(), "features": [4, 16]}, "state_dict": encoder.state_dict()},
                    tmp_path / "c.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_encoder(tmp_path / "c.pt")


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (None, False), ("true", True),
                                             ("False", False), ("1", True), ("no", False)])
def test_bundle_switches_parse_command_line_text(value, expected):
    assert as_flag(value) is expected


def test_nonsense_switch_is_an_error():
    with pytest.raises(InputError, match="resume"):
        as_flag("maybe", "resume")


def test_best_checkpoint_follows_mode_max_and_a_separate_metric_engine(tmp_path):
    from ignite.engine import Engine, Events

    from mri_ssl.engines import AtomicCheckpointer

    network = torch.nn.Linear(2, 2)
    evaluator = Engine(lambda engine, batch: None)
    scores = iter([0.2, 0.7, 0.5])
    trainer = Engine(lambda engine, batch: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):  # attached first, like MONAI's ValidationHandler
        evaluator.state.metrics["val_mean_dice"] = next(scores)
        with torch.no_grad():
            network.bias.fill_(float(engine.state.epoch))

    checkpointer = AtomicCheckpointer(tmp_path, network, metric_name="val_mean_dice", mode="max",
                                      metric_engine=evaluator, export_encoder=False)
    checkpointer.attach(trainer)
    trainer.run([0], max_epochs=3)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and best["best_metric"] == pytest.approx(0.7)
    assert float(best["network"]["bias"][0]) == 2.0
    assert load_checkpoint(tmp_path / "latest.pt")["epoch"] == 3
    with pytest.raises(InputError, match="mode"):
        AtomicCheckpointer(tmp_path, network, mode="largest")


def test_a_run_that_never_validated_says_why_best_is_missing(tmp_path, caplog):
    """val_interval beyond the last epoch: no best.pt; the run warns, and loading best.pt points at final.pt."""
    from ignite.engine import Engine

    from mri_ssl.engines import AtomicCheckpointer

    trainer = Engine(lambda engine, batch: None)
    AtomicCheckpointer(tmp_path, torch.nn.Linear(2, 2), metric_name="val_loss", export_encoder=False).attach(trainer)
    with caplog.at_level("WARNING", logger="mri_ssl.engines.checkpoint"):
        trainer.run([0], max_epochs=2)
    assert not (tmp_path / "best.pt").exists() and (tmp_path / "final.pt").is_file()
    assert "no best.pt written: val_loss was never computed" in caplog.text
    with pytest.raises(InputError, match="wrote final.pt but no best.pt.*val_interval") as error:
        load_checkpoint(tmp_path / "best.pt")
    assert str(tmp_path / "final.pt") in str(error.value)
    (tmp_path / "final.pt").unlink()
    with pytest.raises(InputError, match="checkpoint not found$"):  # no hint where there is no final.pt
        load_checkpoint(tmp_path / "best.pt")


def test_gradient_clipping_limits_the_norm_between_backward_and_step():
    from monai.engines import SupervisedTrainer

    from mri_ssl.engines import GradientClipping

    torch.manual_seed(0)
    network = torch.nn.Linear(4, 1)
    before = network.weight.detach().clone()
    data = [{"image": torch.randn(2, 4) * 1000, "label": torch.zeros(2, 1)}]
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=network,
                                optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
                                loss_function=torch.nn.MSELoss(), decollate=False)
    GradientClipping(max_norm=0.5).attach(trainer)
    trainer.run()
    assert trainer.state.grad_norm > 0.5  # the norm before clipping, as clip_grad_norm_ returns it
    step = torch.cat([(network.weight - before).flatten(), network.bias.detach().flatten()])
    # With SGD lr 1 the step is the clipped gradient; the bias started elsewhere, so bound the weight part only.
    assert float((network.weight - before).norm()) <= 0.5 + 1e-5
    assert torch.isfinite(step).all()
    for bad in (0, -1, float("inf")):
        with pytest.raises(InputError, match="grad_clip_norm"):
            GradientClipping(bad)


def test_backward_and_step_clips_the_gradient_norm_before_the_step():
    from mri_ssl.engines.clipping import backward_and_step

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    loss = (weight * torch.tensor([30.0, 40.0])).sum()  # gradient (30, 40), norm 50
    backward_and_step(loss, optimizer, [weight], max_norm=5.0)
    assert torch.allclose(weight.detach(), torch.tensor([-3.0, -4.0]))  # clipped to norm 5, then one SGD step
    for no_clip in (None, 0):
        weight.data.zero_()
        optimizer.zero_grad()
        backward_and_step((weight * torch.tensor([30.0, 40.0])).sum(), optimizer, [weight], max_norm=no_clip)
        assert torch.allclose(weight.detach(), torch.tensor([-30.0, -40.0]))
