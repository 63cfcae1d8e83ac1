"""Checkpoint files: atomic, loaded with weights_only, clear errors; encoder export round trip; bundle switches."""

import os

import pytest
import torch

from mri_ssl.engines import export_encoder, load_checkpoint, load_encoder, save_checkpoint
from mri_ssl.engines.checkpoint import as_flag
from mri_ssl.errors import InputError
from mri_ssl.networks import CNNEncoder3D


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
