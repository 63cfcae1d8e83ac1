"""The downstream bundles' crash-safety wiring: seeded runs repeat exactly, a NaN loss stops the run cleanly.

Runs the mri_segmentation train config in-process (``ConfigWorkflow``) on the tiny downstream demo data, so handlers
can be attached and the loss tampered with; the subprocess runs of the bundles are in test_downstream_bundles.py.
"""

import json
import logging

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import from_engine

from bundle_runner import bundle_dir
from mri_ssl.data.brain.demo import BRAIN_DOWNSTREAM_DEMO
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.engines import NonFiniteLossError, load_checkpoint

TINY = {
    "demo_resolution_mm": 6.0,
    "demo_subjects": 4,
    "demo_validation_subjects": 1,
    "demo_test_subjects": 1,
    "features": [4, 8, 8],
    "decoder_features": [8, 8, 4, 4],
    "patch_size": [16, 16, 16],
    "batch_size": 2,
    "num_epochs": 2,
    "val_interval": 1,  # cpu_demo.json validates every 4th epoch; these tests check per-epoch checkpoints
    "epoch_length": 2,
    "num_workers": 0,
    "sw_batch_size": 8,
    "pretrained": False,
    "progress_bar": False,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def demo_data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety_demo_data")
    resolve_datalist("", folder, BRAIN_DOWNSTREAM_DEMO, resolution_mm=TINY["demo_resolution_mm"],
                     subjects=TINY["demo_subjects"], validation_subjects=TINY["demo_validation_subjects"],
                     test_subjects=TINY["demo_test_subjects"])
    return folder


def workflow(root, demo_data_dir, logging_file=None, **overrides):
    root.mkdir(parents=True, exist_ok=True)
    tiny = root / "tiny.json"
    tiny.write_text(json.dumps({**TINY, "demo_data_dir": str(demo_data_dir), **overrides}))
    configs = [str(bundle_dir("mri_segmentation") / "configs" / name) for name in ("train.json", "cpu_demo.json")]
    flow = ConfigWorkflow(config_file=configs + [str(tiny)], workflow_type="train", bundle_root=str(root),
                          logging_file=logging_file)
    flow.initialize()
    return flow


def training_losses(root, demo_data_dir, **overrides) -> list[float]:
    flow = workflow(root, demo_data_dir, **overrides)
    trainer = flow.parser.get_parsed_content("train#trainer")
    losses = []
    loss_of = from_engine(["loss"], first=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda engine: losses.append(float(loss_of(engine.state.output))))
    flow.run()
    return losses


@pytest.mark.parametrize("workers", [0, 1])
def test_a_seeded_training_gives_the_same_losses_twice(tmp_path, demo_data_dir, workers):
    # Random crops, affine, bias field, intensity and noise transforms, shuffling and (with workers) the worker
    # processes all draw from the one seed.
    first = training_losses(tmp_path / "a", demo_data_dir, seed=5, num_workers=workers)
    second = training_losses(tmp_path / "b", demo_data_dir, seed=5, num_workers=workers)
    other = training_losses(tmp_path / "c", demo_data_dir, seed=6, num_workers=workers)
    assert len(first) == TINY["num_epochs"] * TINY["epoch_length"]
    assert first == second
    assert first != other  # the test can fail: the seed does reach the random transforms


def test_a_nan_loss_stops_the_segmentation_run_and_keeps_the_finite_checkpoints(tmp_path, demo_data_dir):
    flow = workflow(tmp_path, demo_data_dir, num_epochs=3)
    trainer = flow.parser.get_parsed_content("train#trainer")
    real_loss = trainer.loss_function

    def loss_that_explodes_at_iteration_4(prediction, target):
        value = real_loss(prediction, target)
        return value * float("nan") if trainer.state.iteration == 4 else value

    trainer.loss_function = loss_that_explodes_at_iteration_4
    with pytest.raises(Exception) as raised:  # MONAI wraps errors of config expressions
        flow.run()
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    stop = [e for e in chain if isinstance(e, NonFiniteLossError)]
    assert stop and stop[0].iteration == 4 and "epoch 2, iteration 4" in str(stop[0])
    models = tmp_path / "models"
    assert not (models / "final.pt").exists()
    for name in ("latest.pt", "best.pt"):
        state = load_checkpoint(models / name)
        assert state["iteration"] == 2
        assert all(torch.isfinite(t).all() for t in state["network"].values() if t.is_floating_point())
    # The guard stopped the iteration before backward: the network in memory is finite too.
    assert all(torch.isfinite(p).all() for p in flow.parser.get_parsed_content("network").parameters())


def test_resume_says_what_it_used_and_trains_on_from_final(tmp_path, demo_data_dir, caplog):
    # The bundle's logging.conf (applied by earlier in-process workflows) disables loggers that already exist, and
    # would replace caplog's handler: keep the logging as pytest set it up.
    logging.getLogger("mri_ssl.engines.checkpoint").disabled = False
    caplog.set_level(logging.INFO)
    workflow(tmp_path, demo_data_dir, logging_file=False, num_epochs=1, resume=True).run()
    assert "resume requested, but no checkpoint (final.pt, latest.pt, best.pt)" in caplog.text
    assert load_checkpoint(tmp_path / "models" / "final.pt")["iteration"] == 2
    caplog.clear()
    workflow(tmp_path, demo_data_dir, logging_file=False, num_epochs=2, resume=True).run()  # one more epoch
    assert f"resuming from {tmp_path / 'models' / 'final.pt'}: epoch 1, iteration 2 done" in caplog.text
    final = load_checkpoint(tmp_path / "models" / "final.pt")
    assert (final["epoch"], final["iteration"]) == (2, 4)
