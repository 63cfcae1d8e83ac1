"""FrozenEncoderUNet: shapes, the frozen encoder stays unchanged and in eval mode, loading and the random baseline."""

import pytest
import torch

from mri_ssl.engines.checkpoint import export_encoder
from mri_ssl.errors import InputError
from mri_ssl.networks import CNNEncoder3D, FrozenEncoderUNet

SLIM = {"features": (4, 8, 8)}
SLIM_DECODER = (8, 8, 4, 4)


def slim_unet(**kwargs) -> FrozenEncoderUNet:
    kwargs.setdefault("encoder_config", SLIM)
    return FrozenEncoderUNet(decoder_features=SLIM_DECODER, **kwargs)


def test_output_shape_and_paper_widths():
    torch.manual_seed(0)
    network = slim_unet(out_channels=3)
    assert network(torch.randn(2, 1, 16, 16, 8)).shape == (2, 3, 16, 16, 8)
    paper = FrozenEncoderUNet(out_channels=4)
    assert paper.encoder.features == (64, 128, 256, 512, 768)
    assert [block.convs[-1].conv.out_channels for block in paper.up_blocks] == [512, 256, 128, 64]
    assert paper.refine[-1].conv.out_channels == 32 and paper.head.out_channels == 4


def test_two_dimensional_encoder_works():
    encoder = CNNEncoder3D(spatial_dims=2, features=(4, 8))
    assert FrozenEncoderUNet(encoder, 2, decoder_features=(8, 4, 4))(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)


def test_encoder_weights_unchanged_after_training_and_decoder_changes():
    torch.manual_seed(0)
    network = slim_unet(out_channels=2)
    encoder_before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in network.state_dict().items() if not k.startswith("encoder.")}
    optimizer = torch.optim.AdamW(network.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    network.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(torch.randn(2, 1, 8, 8, 8)),
                                                 torch.randint(0, 2, (2, 8, 8, 8)))
        loss.backward()
        optimizer.step()
    for key, value in network.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert all(p.grad is None for p in network.encoder.parameters())
    changed = [k for k, v in network.state_dict().items()
               if k in decoder_before and not torch.equal(v, decoder_before[k])]
    assert changed, "the decoder did not train"


def test_frozen_encoder_stays_in_eval_mode_without_dropout():
    torch.manual_seed(0)
    network = slim_unet(out_channels=1, encoder_config={**SLIM, "dropout": 0.5})
    network.train()
    assert network.training and not network.encoder.training
    x = torch.randn(1, 1, 8, 8, 8)
    first, second = network.encode(x), network.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not first[0].requires_grad


def test_unfrozen_encoder_trains():
    network = slim_unet(out_channels=1, freeze_encoder=False)
    network.train()
    assert network.encoder.training
    network(torch.randn(1, 1, 8, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in network.encoder.parameters())


def test_loads_exported_encoder_and_random_baseline_has_same_shape(tmp_path):
    torch.manual_seed(1)
    pretrained = CNNEncoder3D(features=SLIM["features"])
    path = export_encoder(pretrained, tmp_path / "encoder.pt")
    loaded = FrozenEncoderUNet(str(path), 2, decoder_features=SLIM_DECODER)
    for key, value in pretrained.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value)
    baseline = FrozenEncoderUNet(str(path), 2, decoder_features=SLIM_DECODER, pretrained=False)
    assert baseline.encoder.config() == pretrained.config()
    assert not torch.equal(baseline.encoder.stages[0][0].conv.weight, pretrained.stages[0][0].conv.weight)
    assert FrozenEncoderUNet(pretrained, 2, decoder_features=SLIM_DECODER).encoder is pretrained


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(InputError, match="decoder_features"):
        FrozenEncoderUNet(encoder_config=SLIM, decoder_features=(8, 8, 4))
    with pytest.raises(InputError, match="out_channels"):
        slim_unet(out_channels=0)
    with pytest.raises(InputError, match="encoder"):
        FrozenEncoderUNet(torch.nn.Linear(2, 2), decoder_features=SLIM_DECODER)
    with pytest.raises(InputError, match="multiple"):
        slim_unet()(torch.randn(1, 1, 10, 8, 8))
    with pytest.raises(InputError, match="not found"):
        FrozenEncoderUNet("/nonexistent/encoder.pt", decoder_features=SLIM_DECODER)
