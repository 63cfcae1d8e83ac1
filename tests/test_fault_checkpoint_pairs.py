"""Fault injection on checkpoint pairs: a kill between the ``.pt`` and its safetensors twin never loads old weights.

The checkpointer writes ``best.pt`` and then ``best.safetensors``; the probe of issue 19 killed a run between the two
writes and ``load_network_weights`` silently returned the previous epoch's twin. Both files now carry one ``pair_id``
and the loader reads the (newer) ``.pt`` when the ids differ.
"""

import logging
import multiprocessing
import os
import signal
import sys

import pytest
import torch
from ignite.engine import Engine, Events

from mri_ssl.engines import AtomicCheckpointer, load_checkpoint, load_encoder, load_network_weights
from mri_ssl.engines import checkpoint as checkpoint_module
from mri_ssl.io import weights as weights_module
from mri_ssl.networks import CNNEncoder3D


def run_killed_in_the_third_twin(folder: str) -> None:
    """A run whose network weights equal the epoch number, whose "val_loss" falls every epoch (so every epoch writes
    a new best pair), and whose third best twin is never written: the process SIGKILLs itself inside that write."""
    torch.set_num_threads(1)
    network = torch.nn.Linear(2, 1)
    trainer = Engine(lambda engine, batch: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def learn(engine):
        with torch.no_grad():
            network.weight.fill_(engine.state.epoch)
        engine.state.metrics["val_loss"] = 1.0 / engine.state.epoch

    real_save_safetensors = checkpoint_module.save_safetensors

    def die_in_the_third_twin(state_dict, path, metadata=None):
        if float(state_dict["weight"][0, 0]) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save_safetensors(state_dict, path, metadata)

    checkpoint_module.save_safetensors = die_in_the_third_twin  # in the forked child only
    AtomicCheckpointer(folder, network, export_encoder=False).attach(trainer)
    trainer.run([0], max_epochs=5)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork")
def test_a_kill_between_the_two_files_loads_the_newer_checkpoint_with_a_warning(tmp_path, caplog):
    # A forked child (torch and ignite already imported) is killed for real, in a moment.
    child = multiprocessing.get_context("fork").Process(target=run_killed_in_the_third_twin, args=(str(tmp_path),))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
    assert child.exitcode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    assert (tmp_path / "best.safetensors").is_file()  # the twin of epoch 2 is still there
    with caplog.at_level(logging.WARNING):
        weights = load_network_weights(tmp_path / "best.pt")
    assert float(weights["weight"][0, 0]) == 3.0, "loaded the twin of an older epoch"
    assert "not from the same save" in caplog.text and "epoch 3" in caplog.text and "epoch 2" in caplog.text


def test_a_consistent_pair_reads_the_twin_without_a_warning(tmp_path, caplog, monkeypatch):
    network = torch.nn.Linear(2, 1)
    trainer = Engine(lambda engine, batch: None)
    trainer.state.epoch, trainer.state.iteration = 1, 1
    trainer.state.metrics = {"val_loss": 0.5}
    checkpointer = AtomicCheckpointer(tmp_path, network, export_encoder=False)
    checkpointer.epoch_completed(trainer)
    read = []
    real = weights_module.load_safetensors
    monkeypatch.setattr(weights_module, "load_safetensors", lambda *a, **k: read.append(a[0]) or real(*a, **k))
    with caplog.at_level(logging.WARNING):
        weights = load_network_weights(tmp_path / "best.pt")
    assert read == [tmp_path / "best.safetensors"] and "same save" not in caplog.text
    torch.testing.assert_close(weights["weight"], network.weight)


def test_an_interrupted_encoder_export_loads_the_newer_encoder(tmp_path, monkeypatch, caplog):
    old, new = CNNEncoder3D(features=(4, 8)).eval(), CNNEncoder3D(features=(4, 8)).eval()
    checkpoint_module.export_encoder(old, tmp_path / "encoder_best.pt")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.export_encoder(new, tmp_path / "encoder_best.pt")
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        loaded = load_encoder(tmp_path / "encoder_best.pt")
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(loaded(x), new(x))
    assert "not from the same save" in caplog.text
    assert not [name for name in os.listdir(tmp_path) if ".partial" in name]
