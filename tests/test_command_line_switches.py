"""Switches as the command line passes them: `python -m monai.bundle run --freeze_encoder false` hands the network
the text "false", which `bool()` would read as true (a frozen encoder the user asked to fine-tune)."""

from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.networks import FrozenEncoderUNet
from mri_ssl.networks.cam import CAMClassifier, CAMContrastModel
from mri_ssl.networks.simsiam import EncoderClassifier

FUNDUS_CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "fundus_camcontrast" / "configs"


class _TinyEncoder(nn.Module):
    out_features = 4

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x):
        return self.linear(x)


NETWORKS = {
    "FrozenEncoderUNet": lambda flag: FrozenEncoderUNet(
        encoder_config={"features": (4, 8, 8), "dropout": 0.0}, decoder_features=(8, 8, 4, 4), out_channels=2,
        dropout=0.0, freeze_encoder=flag),
    "CAMClassifier": lambda flag: CAMClassifier(encoder_config={"features": (4, 8)}, freeze_encoder=flag),
    "EncoderClassifier": lambda flag: EncoderClassifier(_TinyEncoder(), num_classes=3, freeze_encoder=flag),
}


def _encoder_trains(network: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in network.encoder.parameters())


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("text, frozen", [("false", False), ("False", False), ("0", False), ("true", True),
                                          ("yes", True), (False, False), (True, True)])
def test_freeze_encoder_reads_command_line_text(name, text, frozen):
    network = NETWORKS[name](text)
    assert network.freeze_encoder is frozen
    assert _encoder_trains(network) is not frozen


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_freeze_encoder_rejects_text_that_is_not_a_switch(name):
    with pytest.raises(InputError, match="freeze_encoder"):
        NETWORKS[name]("frozen")


def test_projection_batch_norm_text_false_builds_no_batch_norm():
    model = CAMContrastModel(encoder_config={"features": (4, 8)}, heatmap=False, projection_batch_norm="false")
    assert not any(isinstance(module, nn.BatchNorm1d) for module in model.projector.modules())
    model = CAMContrastModel(encoder_config={"features": (4, 8)}, heatmap=False, projection_batch_norm="true")
    assert any(isinstance(module, nn.BatchNorm1d) for module in model.projector.modules())


@pytest.mark.parametrize("config, switch, on, off", [
    ("finetune_seg.json", "freeze_encoder", "_frozen", "_full"),
    ("finetune_cls.json", "linear_evaluation", "_linear", "_full"),
])
def test_fundus_stage_names_follow_the_switch_given_as_text(config, switch, on, off):
    for text, suffix in (("false", off), ("true", on)):
        parser = ConfigParser()
        parser.read_config(str(FUNDUS_CONFIGS / config))
        parser[switch] = text
        stage = parser.get_parsed_content("stage")
        assert suffix in stage and (on if suffix == off else off) not in stage, (text, stage)
